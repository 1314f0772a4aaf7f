//! The client preset over real loopback sockets: a tonic server for the generated `palisade.echo.Echo`
//! service (examples/pb) and the generated client over `ClientStack::tonic()` around a `Channel`.
//!
//! Covers deadline propagation, retry on `UNAVAILABLE` (and none on a client error), the breaker opening
//! and failing fast, the gRPC codes of per-try timeouts, a full bulkhead and injected faults, and the
//! audit log of the breaker's transitions. Real time (the network does not run on paused time); every
//! wait is short and bounded.

mod common;

// The code tonic-prost-build generated from examples/pb/echo.proto (see its header).
#[allow(unreachable_pub)]
#[rustfmt::skip]
#[path = "../examples/pb/echo.rs"]
mod pb;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use palisade::audit::Audit;
use palisade::breaker::{CircuitBreakerLayer, CircuitState};
use palisade::bulkhead::BulkheadLayer;
use palisade::chaos::{ChaosLayer, Fault};
use palisade::error::{BoxError, RateLimited};
use palisade::retry::{Backoff, RetryLayer};
use palisade::stack::ClientStack;
use palisade::timeout::TimeoutLayer;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{SayReply, SayRequest};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tower::Layer;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The server side: echoes, after `delay_ms`, failing when the request or the test asks it to.
#[derive(Debug, Default)]
struct Backend {
    /// Calls that reached the handler.
    calls: AtomicUsize,
    /// Fail this many of the next calls with `UNAVAILABLE`.
    fail_next: AtomicU32,
    /// The `grpc-timeout` of every call, in arrival order.
    deadlines: Mutex<Vec<Option<Duration>>>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn deadlines(&self) -> Vec<Option<Duration>> {
        self.deadlines.lock().unwrap().clone()
    }

    fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
}

/// The caller's deadline from `grpc-timeout` (1–8 digits and a unit), if well-formed.
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let deadline = grpc_timeout(request.metadata());
        self.deadlines.lock().unwrap().push(deadline);
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(ms(u64::from(req.delay_ms))).await;
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(Status::unavailable("backend warming up"));
        }
        if req.fail_with != 0 {
            return Err(Status::new(Code::from_i32(req.fail_with), "asked to fail"));
        }
        Ok(Response::new(SayReply {
            message: req.message,
            deadline_ms: deadline.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }))
    }
}

/// Serves `backend` on a fresh loopback port, and connects a channel to it.
async fn serve(backend: Arc<Backend>) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        Server::builder()
            .add_service(EchoServer::from_arc(backend))
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    common::channel(addr).await
}

fn hello() -> SayRequest {
    SayRequest {
        message: "hello".to_owned(),
        ..SayRequest::default()
    }
}

fn failing_with(code: Code) -> SayRequest {
    SayRequest {
        fail_with: code as i32,
        ..hello()
    }
}

fn slow(delay_ms: u32) -> SayRequest {
    SayRequest {
        delay_ms,
        ..hello()
    }
}

/// One call, within 5 s.
async fn say<T>(client: &mut EchoClient<T>, req: SayRequest) -> Result<SayReply, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    tokio::time::timeout(Duration::from_secs(5), client.say(req))
        .await
        .expect("the call ends within 5 s")
        .map(Response::into_inner)
}

/// Polls `cond` every 5 ms until it holds, for at most 2 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(ms(5)).await;
    }
}

#[tokio::test]
async fn the_total_timeout_is_propagated_as_the_servers_deadline() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;

    let stack = ClientStack::tonic()
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(ms(800))
                .propagate_grpc_timeout(true),
        )
        .build()
        .unwrap();
    assert_eq!(stack.handles().timeout(), Some(ms(800)));
    let mut client = EchoClient::new(stack.layer(channel.clone()));
    let reply = say(&mut client, hello()).await.unwrap();
    assert_eq!(reply.message, "hello");
    let seen = reply.deadline_ms.expect("the server saw a grpc-timeout");
    assert!(seen > 0 && seen <= 800, "the server saw {seen} ms");

    // A per-call deadline shorter than the stack's wins.
    let mut req = Request::new(hello());
    req.set_timeout(ms(300));
    let reply = tokio::time::timeout(Duration::from_secs(5), client.say(req))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let seen = reply.deadline_ms.expect("the server saw a grpc-timeout");
    assert!(seen > 0 && seen <= 300, "the server saw {seen} ms");

    // Without propagation the server sees no deadline at all.
    let stack = ClientStack::tonic()
        .total_timeout(TimeoutLayer::builder().timeout(ms(800)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(stack.layer(channel));
    let reply = say(&mut client, hello()).await.unwrap();
    assert_eq!(reply.deadline_ms, None);
    assert_eq!(backend.calls(), 3);
}

#[tokio::test]
async fn unavailable_is_retried_to_success_and_a_client_error_is_not_retried() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let stack = ClientStack::tonic()
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(2))
                .propagate_grpc_timeout(true),
        )
        .retry(
            RetryLayer::builder()
                .max_attempts(4)
                .backoff(Backoff::exponential(ms(5), ms(20)))
                // Every gRPC call is a POST; Say is idempotent, so every call may be repeated.
                .retry_if(|_| true),
        )
        .breaker(
            CircuitBreakerLayer::builder()
                .name("echo")
                .no_failure_rate()
                .consecutive_failures(5),
        )
        .per_try_timeout(TimeoutLayer::builder().timeout(ms(500)))
        .build()
        .unwrap();
    let retry = stack.handles().retry().unwrap().clone();
    let breaker = stack.handles().breaker().unwrap().clone();
    let mut client = EchoClient::new(stack.layer(channel));

    // Two UNAVAILABLEs, then an answer: the caller only sees the answer.
    backend.fail_next(2);
    let reply = say(&mut client, hello()).await.unwrap();
    assert_eq!(reply.message, "hello");
    assert_eq!(backend.calls(), 3, "two failed attempts and the good one");
    assert_eq!(retry.retries(), 2);
    assert_eq!(retry.requests(), 1);
    let deadlines = backend.deadlines();
    assert_eq!(deadlines.len(), 3);
    assert!(
        deadlines
            .iter()
            .all(|d| d.is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(2))),
        "every attempt carried the caller's deadline: {deadlines:?}"
    );
    assert_eq!(
        breaker.state(),
        CircuitState::Closed,
        "the success reset the streak"
    );

    // INVALID_ARGUMENT is the caller's mistake: sent once, returned as it is, and not held against
    // the backend.
    for _ in 0..6 {
        let status = say(&mut client, failing_with(Code::InvalidArgument))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "asked to fail");
    }
    assert_eq!(backend.calls(), 3 + 6);
    assert_eq!(retry.retries(), 2);
    assert_eq!(breaker.state(), CircuitState::Closed);

    // A backend that stays down: every attempt is used, then the backend's own status comes back.
    let status = say(&mut client, failing_with(Code::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "asked to fail");
    assert_eq!(backend.calls(), 9 + 4);
    assert_eq!(retry.retries(), 2 + 3);
}

#[tokio::test]
async fn the_breaker_opens_and_then_fails_fast_without_reaching_the_server() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let stack = ClientStack::tonic()
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(2))
                .propagate_grpc_timeout(true),
        )
        .retry(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::exponential(ms(5), ms(20)))
                .retry_if(|_| true),
        )
        .breaker(
            CircuitBreakerLayer::builder()
                .name("echo")
                .no_failure_rate()
                .consecutive_failures(3)
                .open_wait(Duration::from_secs(30), Duration::from_secs(60)),
        )
        .per_try_timeout(TimeoutLayer::builder().timeout(ms(500)))
        .build()
        .unwrap();
    let retry = stack.handles().retry().unwrap().clone();
    let breaker = stack.handles().breaker().unwrap().clone();
    let mut client = EchoClient::new(stack.layer(channel));

    // Three attempts fail; the third trips the breaker. The caller gets the backend's status.
    let status = say(&mut client, failing_with(Code::Unavailable))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "asked to fail");
    assert_eq!(backend.calls(), 3);
    assert_eq!(breaker.state(), CircuitState::Open);

    // Now even a good request is refused before the network, and not retried.
    let retries = retry.retries();
    for _ in 0..5 {
        let started = Instant::now();
        let status = say(&mut client, hello()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().starts_with("circuit open"),
            "{}",
            status.message()
        );
        let pushback = status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .expect("the time until the next probe")
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        assert!(pushback > 0 && pushback <= 60_000, "{pushback}");
        assert!(started.elapsed() < ms(250), "fails fast");
    }
    assert_eq!(
        backend.calls(),
        3,
        "the open circuit kept every call off the wire"
    );
    assert_eq!(retry.retries(), retries);
}

#[tokio::test]
async fn a_per_try_timeout_is_deadline_exceeded_and_retried_within_the_total() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let stack = ClientStack::tonic()
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(2))
                .propagate_grpc_timeout(true),
        )
        .retry(
            RetryLayer::builder()
                .max_attempts(2)
                .backoff(Backoff::exponential(ms(5), ms(5)))
                .retry_if(|_| true),
        )
        .per_try_timeout(TimeoutLayer::builder().timeout(ms(100)))
        .build()
        .unwrap();
    assert_eq!(stack.handles().per_try_timeout(), Some(ms(100)));
    let retry = stack.handles().retry().unwrap().clone();
    let mut client = EchoClient::new(stack.layer(channel));

    // The server takes 1 s; each attempt gives up after 100 ms.
    let started = Instant::now();
    let status = say(&mut client, slow(1_000)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(status.message(), "request timed out after 100ms");
    assert!(took >= ms(200), "two attempts of 100 ms: {took:?}");
    assert!(took < ms(900), "did not wait for the server: {took:?}");
    assert_eq!(retry.retries(), 1);
    eventually("both attempts to reach the server", || backend.calls() == 2).await;

    // A fast answer is untouched by the per-try timeout.
    let reply = say(&mut client, slow(10)).await.unwrap();
    assert_eq!(reply.message, "hello");
}

/// Each attempt carries the time *left* of the total budget: the total timeout writes `grpc-timeout`
/// once, above the retry layer, and records its deadline in the request; the retry layer rewrites the
/// header from it before each retry, so a retry made 100 ms into a 2 s budget does not tell the server
/// "2 s".
#[tokio::test]
async fn a_retry_carries_the_remaining_budget_as_its_deadline() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let stack = ClientStack::tonic()
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(2))
                .propagate_grpc_timeout(true),
        )
        .retry(
            RetryLayer::builder()
                .max_attempts(2)
                .backoff(Backoff::exponential(ms(5), ms(5)))
                .retry_if(|_| true),
        )
        .per_try_timeout(TimeoutLayer::builder().timeout(ms(100)))
        .build()
        .unwrap();
    let mut client = EchoClient::new(stack.layer(channel));
    let status = say(&mut client, slow(1_000)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    eventually("both attempts to reach the server", || backend.calls() == 2).await;
    let deadlines = backend.deadlines();
    let second = deadlines[1].expect("the retry carried a deadline");
    assert!(
        second <= Duration::from_secs(2) - ms(100),
        "the retry started at least 100 ms into the budget, yet told the server {second:?}"
    );
}

#[tokio::test]
async fn a_full_bulkhead_is_unavailable_without_reaching_the_server() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let stack = ClientStack::tonic()
        .total_timeout(TimeoutLayer::builder().timeout(Duration::from_secs(2)))
        .bulkhead(
            BulkheadLayer::builder()
                .name("echo")
                .max_concurrent(1)
                .retry_after(ms(50)),
        )
        .build()
        .unwrap();
    let bulkhead = stack.handles().bulkhead().unwrap().clone();
    let client = EchoClient::new(stack.layer(channel));

    // One slow call takes the only slot...
    let mut first = client.clone();
    let in_flight = tokio::spawn(async move { say(&mut first, slow(300)).await });
    eventually("the slow call to hold the slot", || {
        bulkhead.in_flight() == 1
    })
    .await;
    eventually("the slow call to reach the server", || backend.calls() == 1).await;

    // ...so the next is refused at once, with the bulkhead's hint.
    let started = Instant::now();
    let status = say(&mut client.clone(), hello()).await.unwrap_err();
    assert!(started.elapsed() < ms(200), "refused at once");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("service overloaded"),
        "{}",
        status.message()
    );
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap()),
        Some("50")
    );
    assert_eq!(bulkhead.rejected(), 1);
    assert_eq!(backend.calls(), 1, "the refused call never left the client");

    // The slow call finishes normally and gives its slot back.
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(reply.message, "hello");
    eventually("the slot to be given back", || bulkhead.in_flight() == 0).await;
    assert_eq!(
        say(&mut client.clone(), hello()).await.unwrap().message,
        "hello"
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn injected_faults_become_their_grpc_codes() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let stack = ClientStack::tonic()
        .total_timeout(TimeoutLayer::builder().timeout(Duration::from_secs(2)))
        .chaos(ChaosLayer::builder().name("echo-link").seed(7))
        .build()
        .unwrap();
    let chaos = stack.handles().chaos().unwrap().clone();
    let mut client = EchoClient::new(stack.layer(channel));

    // No fault: calls pass.
    assert_eq!(say(&mut client, hello()).await.unwrap().message, "hello");
    assert_eq!(backend.calls(), 1);

    // A rejection marker: its gRPC code, message and retry hint.
    let id = chaos.inject(Fault::error_with(|| RateLimited::new(ms(1500)).into()));
    let status = say(&mut client, hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("rate limit exceeded"),
        "{}",
        status.message()
    );
    assert_eq!(
        status
            .metadata()
            .get("grpc-retry-pushback-ms")
            .map(|v| v.to_str().unwrap()),
        Some("1500")
    );
    assert!(chaos.remove(id));

    // A gRPC status: passed through as it is.
    let id = chaos.inject(Fault::error_with(|| {
        Box::new(Status::unavailable("link down (injected)"))
    }));
    let status = say(&mut client, hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "link down (injected)");
    assert!(chaos.remove(id));

    // An HTTP 503 with no gRPC status: tonic maps it to UNAVAILABLE.
    let id = chaos.inject(Fault::status(http::StatusCode::SERVICE_UNAVAILABLE));
    let status = say(&mut client, hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(chaos.remove(id));

    // An opaque error: UNKNOWN, and its text is not sent to the caller.
    let id = chaos.inject(Fault::error());
    let status = say(&mut client, hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(status.message(), "internal error");
    assert_eq!(chaos.active()[0].hits(), 1);
    assert!(chaos.remove(id));

    assert_eq!(backend.calls(), 1, "no injected fault reached the server");
    assert_eq!(say(&mut client, hello()).await.unwrap().message, "hello");
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn the_audit_log_records_the_breaker_opening_and_recovering_and_verifies() {
    let backend = Arc::new(Backend::default());
    let channel = serve(backend.clone()).await;
    let (audit, log) = Audit::memory(1024);
    let stack = ClientStack::tonic()
        .audit(&audit)
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(2))
                .propagate_grpc_timeout(true),
        )
        .retry(RetryLayer::builder().max_attempts(1).retry_if(|_| true))
        .breaker(
            CircuitBreakerLayer::builder()
                .name("echo")
                .no_failure_rate()
                .consecutive_failures(2)
                .open_wait(ms(150), ms(150))
                .jitter(0.0),
        )
        .build()
        .unwrap();
    let breaker = stack.handles().breaker().unwrap().clone();
    assert!(stack.handles().audit().is_enabled());
    let mut client = EchoClient::new(stack.layer(channel));

    let mut tripping = Instant::now();
    for _ in 0..2 {
        tripping = Instant::now();
        let status = say(&mut client, failing_with(Code::Unavailable))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(breaker.state(), CircuitState::Open);

    // Healthy again: once the open wait is over, the probe goes through and closes the circuit.
    let deadline = tripping + Duration::from_secs(2);
    let reply = loop {
        match say(&mut client, hello()).await {
            Ok(reply) => break reply,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                assert!(status.message().starts_with("circuit open"));
                assert!(
                    Instant::now() < deadline,
                    "the circuit never let a probe through"
                );
                tokio::time::sleep(ms(20)).await;
            }
        }
    };
    assert!(tripping.elapsed() >= ms(150), "not before the open wait");
    assert_eq!(reply.message, "hello");
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(backend.calls(), 3, "two failures and the probe");

    audit.flush().await.unwrap();
    let records = log.records();
    let transitions: Vec<&str> = records
        .iter()
        .map(|r| r.kind.as_str())
        .filter(|k| k.starts_with("breaker."))
        .collect();
    assert_eq!(
        transitions,
        ["breaker.opened", "breaker.half_open", "breaker.closed"]
    );
    let report = audit.verify(&records, audit.head().as_ref()).unwrap();
    assert_eq!(report.records, records.len() as u64);

    // The chain catches an edited record.
    let mut forged = records.clone();
    let opened = forged
        .iter_mut()
        .find(|r| r.kind == "breaker.opened")
        .unwrap();
    opened.kind = "breaker.closed".to_owned();
    assert!(audit.verify(&forged, audit.head().as_ref()).is_err());
}
