//! A tonic client behind palisade's client preset, talking to an in-process tonic server.
//!
//! ```text
//! cargo run --example grpc_client --features full
//! ```
//!
//! It starts a `palisade.echo.Echo` server (examples/pb/echo.proto) on 127.0.0.1 and wraps the
//! client's `Channel` in `ClientStack::tonic()`:
//!
//! **total timeout (sent as `grpc-timeout`) → retry on `UNAVAILABLE` → circuit breaker → per-try
//! timeout → chaos → channel**
//!
//! and shows, step by step:
//!
//! 1. **deadline propagation**: the server reports the deadline it received;
//! 2. **an outage**: the server fails with `UNAVAILABLE`; each call is retried, the breaker opens, and
//!    from then on calls fail fast with `UNAVAILABLE` ("circuit open") without reaching the server;
//! 3. **recovery**: the server is healthy again; after the breaker's open wait (1 s) a probe goes
//!    through and closes the circuit;
//! 4. **a flaky link** (fault injection): 30 % of the attempts fail on the way, and retries hide it;
//!
//! then prints the audit log the stack wrote (the breaker's transitions, the retry give-up, the injected
//! fault), after verifying its hash chain. It ends by itself in about two seconds, with exit code 0;
//! any unexpected outcome ends it with an error.

// The code tonic-prost-build generated from pb/echo.proto (see its header).
#[allow(unreachable_pub)]
#[rustfmt::skip]
#[path = "pb/echo.rs"]
mod pb;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use palisade::audit::Audit;
use palisade::breaker::{BreakerHandle, CircuitBreakerLayer, CircuitState};
use palisade::chaos::{ChaosLayer, Fault};
use palisade::error::BoxError;
use palisade::retry::{Backoff, RetryLayer};
use palisade::stack::ClientStack;
use palisade::timeout::TimeoutLayer;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{SayReply, SayRequest};
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tower::Layer;

/// Total budget of one call, retries and backoff included.
const TOTAL: Duration = Duration::from_secs(2);
/// Budget of one attempt.
const PER_TRY: Duration = Duration::from_millis(500);
/// Attempts per call, the first included.
const ATTEMPTS: u32 = 3;
/// Consecutive failures that open the breaker.
const TRIP_AFTER: u32 = 4;
/// How long the breaker stays open before it lets a probe through.
const OPEN_WAIT: Duration = Duration::from_secs(1);

/// The server: echoes, or fails with the code the request asks for. Counts the calls that reach it.
#[derive(Debug, Default)]
struct Backend {
    calls: AtomicUsize,
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout_ms);
        let req = request.into_inner();
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
        }
        if req.fail_with != 0 {
            return Err(Status::new(
                Code::from_i32(req.fail_with),
                "backend unavailable",
            ));
        }
        Ok(Response::new(SayReply {
            message: req.message,
            deadline_ms: deadline,
        }))
    }
}

/// A `grpc-timeout` value (1–8 digits and a unit) in whole milliseconds; `None` if malformed.
fn grpc_timeout_ms(value: &str) -> Option<u64> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1_000,
        "m" => n,
        "u" => n / 1_000,
        "n" => n / 1_000_000,
        _ => return None,
    })
}

/// One call, bounded well above the stack's own total timeout.
async fn say<T>(client: &mut EchoClient<T>, req: SayRequest) -> Result<SayReply, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    match tokio::time::timeout(TOTAL * 2, client.say(req)).await {
        Ok(res) => res.map(Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded("the example's own bound")),
    }
}

fn hello(message: &str) -> SayRequest {
    SayRequest {
        message: message.to_owned(),
        ..SayRequest::default()
    }
}

fn status_line(status: &Status) -> String {
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .map(|ms| format!(", grpc-retry-pushback-ms {ms}"))
        .unwrap_or_default();
    format!("{:?} \"{}\"{pushback}", status.code(), status.message())
}

fn state(breaker: &BreakerHandle) -> &'static str {
    match breaker.state() {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half-open",
    }
}

/// Fails the example with `what` unless `ok`.
fn expect(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected: {what}").into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    match tokio::time::timeout(Duration::from_secs(20), run()).await {
        Ok(res) => res,
        Err(_) => Err("the example did not finish within 20 s".into()),
    }
}

async fn run() -> Result<(), BoxError> {
    // The server, on an ephemeral loopback port.
    let backend = Arc::new(Backend::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn({
        let backend = backend.clone();
        async move {
            Server::builder()
                .add_service(EchoServer::from_arc(backend))
                .serve_with_incoming(TcpIncoming::from(listener))
                .await
        }
    });
    let calls = || backend.calls.load(Ordering::SeqCst);

    // The client: a channel, wrapped in the client preset.
    let channel = tokio::time::timeout(
        Duration::from_secs(5),
        Channel::from_shared(format!("http://{addr}"))?.connect(),
    )
    .await??;
    let (audit, log) = Audit::memory(256);
    let stack = ClientStack::tonic()
        .audit(&audit)
        .total_timeout(
            TimeoutLayer::builder()
                .timeout(TOTAL)
                .propagate_grpc_timeout(true),
        )
        .retry(
            RetryLayer::builder()
                .max_attempts(ATTEMPTS)
                .backoff(Backoff::exponential(
                    Duration::from_millis(20),
                    Duration::from_millis(100),
                ))
                .seed(1)
                // Every gRPC call is a POST: say which may be repeated. Say is idempotent.
                .retry_if(|parts| parts.uri.path() == "/palisade.echo.Echo/Say"),
        )
        .breaker(
            CircuitBreakerLayer::builder()
                .name("echo")
                .no_failure_rate()
                .consecutive_failures(TRIP_AFTER)
                .open_wait(OPEN_WAIT, OPEN_WAIT)
                .jitter(0.0),
        )
        .per_try_timeout(TimeoutLayer::builder().timeout(PER_TRY))
        .chaos(ChaosLayer::builder().name("echo-link").seed(42))
        .build()?;
    let handles = stack.handles().clone();
    let (Some(retry), Some(breaker), Some(chaos)) =
        (handles.retry(), handles.breaker(), handles.chaos())
    else {
        return Err("the stack is missing a slot".into());
    };
    let mut client = EchoClient::new(stack.layer(channel));

    println!("palisade grpc_client: server on {addr}");
    println!(
        "stack: total timeout {TOTAL:?} (sent as grpc-timeout) → retry ×{ATTEMPTS} → breaker (opens \
         after {TRIP_AFTER} failures, {OPEN_WAIT:?}) → per-try timeout {PER_TRY:?} → chaos → channel"
    );

    // 1. Deadline propagation.
    println!("\n1. deadline propagation");
    let reply = say(&mut client, hello("hello")).await?;
    let seen = reply.deadline_ms.ok_or("the server saw no deadline")?;
    println!(
        "   say(\"{}\") → ok; the server saw grpc-timeout = {seen} ms (the total timeout)",
        reply.message
    );
    expect(seen > 0 && seen <= 2_000, "deadline within the total")?;
    let mut req = Request::new(hello("hurry"));
    req.set_timeout(Duration::from_millis(300));
    let reply = tokio::time::timeout(TOTAL * 2, client.say(req))
        .await??
        .into_inner();
    let seen = reply.deadline_ms.ok_or("the server saw no deadline")?;
    println!("   with a 300 ms per-call deadline: the server saw {seen} ms (the smaller one wins)");
    expect(seen > 0 && seen <= 300, "per-call deadline honoured")?;

    // 2. An outage: the server answers UNAVAILABLE.
    println!("\n2. the server fails with UNAVAILABLE");
    let down = || SayRequest {
        fail_with: Code::Unavailable as i32,
        ..hello("are you there?")
    };
    for n in 1..=2 {
        let (before, retries) = (calls(), retry.retries());
        let status = say(&mut client, down()).await.err().ok_or("a failure")?;
        println!(
            "   call {n}: {} — {} attempt(s) reached the server, {} retries, breaker {}",
            status_line(&status),
            calls() - before,
            retry.retries() - retries,
            state(breaker),
        );
        expect(status.code() == Code::Unavailable, "UNAVAILABLE")?;
    }
    expect(breaker.state() == CircuitState::Open, "the breaker opened")?;
    for n in 3..=5 {
        let before = calls();
        let started = Instant::now();
        let status = say(&mut client, hello("hello?"))
            .await
            .err()
            .ok_or("a fast failure")?;
        println!(
            "   call {n}: {} in {:?}, without reaching the server ({} calls)",
            status_line(&status),
            started.elapsed(),
            calls() - before,
        );
        expect(
            status.code() == Code::Unavailable && calls() == before,
            "a fast UNAVAILABLE from the open circuit",
        )?;
    }

    // 3. Recovery: healthy again; wait out the open wait, then a probe closes the circuit.
    println!("\n3. the server is healthy again");
    let wait = breaker.retry_after().unwrap_or(OPEN_WAIT).min(OPEN_WAIT);
    println!(
        "   waiting {} ms for the breaker to let a probe through",
        wait.as_millis()
    );
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    let reply = say(&mut client, hello("welcome back")).await?;
    println!(
        "   say(\"{}\") → ok; breaker {}",
        reply.message,
        state(breaker)
    );
    expect(
        breaker.state() == CircuitState::Closed,
        "the breaker closed",
    )?;

    // 4. A flaky link: 30 % of the attempts fail before reaching the server.
    println!("\n4. chaos: 30 % of the attempts fail with UNAVAILABLE on the way");
    let fault = chaos.inject(
        Fault::error_with(|| Box::new(Status::unavailable("connection reset (injected)")))
            .probability(0.3),
    );
    let (retries, mut ok) = (retry.retries(), 0);
    for _ in 0..10 {
        ok += usize::from(say(&mut client, hello("hello")).await.is_ok());
    }
    let hits = chaos
        .active()
        .first()
        .map_or(0, palisade::chaos::ActiveFault::hits);
    chaos.remove(fault);
    println!(
        "   10 calls: {ok} succeeded; {hits} attempts failed on the link, {} retries, breaker {}",
        retry.retries() - retries,
        state(breaker)
    );

    // The breaker's transitions, from the audit log, checked against its hash chain.
    audit.flush().await?;
    let records = log.records();
    let report = audit.verify(&records, audit.head().as_ref())?;
    println!(
        "\naudit log: {} records, hash chain verified",
        report.records
    );
    for r in &records {
        println!("   #{} {} {}", r.seq, r.kind, r.details);
    }

    server.abort();
    Ok(())
}
