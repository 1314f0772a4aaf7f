//! The whole server stack on the happy path: `server_stack` compares a bare service with
//! `palisade::stack::ServerStack` with every slot filled (rescue → gate → rate limit keyed by
//! `x-tenant-id` → bulkhead → timeout → fallback (static) → breaker → chaos with no fault), the same
//! stack built from `Option` slots all `Some` (the `Maybe` path a config file takes; chaos stays a plain
//! slot, see below), and two hand-stacked peers: tower's `ConcurrencyLimit` + `Timeout`, and
//! tower-resilience's rate limiter + bulkhead + time limiter + circuit breaker (each configured as its
//! docs show). `server_stack_layers` grows the stack one slot at a time from the handler outwards, so
//! each step's difference is that layer's marginal cost inside the stack, and prints each step's
//! response-future size.
//!
//! Run: `cargo bench --features full --bench stack`. Each iteration builds a request carrying an
//! `x-tenant-id` header (rotating through 1,000 pre-warmed tenants; the quotas always admit), then
//! `poll_ready` + `call` + polls the response future to completion with a no-op waker; the inner
//! service is ready at once. Building the request is part of every variant, bare included, so the
//! differences are the stacks' own cost. Budget (ARCHITECTURE.md): the whole server stack ≤ 250 ns
//! over bare.
//!
//! Everything runs inside one entered (never driven) current-thread tokio runtime: `Audit::memory`
//! spawns its writer there, and tower's `Timeout` and tower-resilience arm tokio timers eagerly.

mod common;

use std::future::{ready, Ready};
use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use palisade::audit::Audit;
use palisade::breaker::CircuitBreakerLayer;
use palisade::bulkhead::BulkheadLayer;
use palisade::chaos::ChaosLayer;
use palisade::degrade::GateLayer;
use palisade::error::BoxError;
use palisade::fallback::{FallbackLayer, StaticResponse};
use palisade::health::Health;
use palisade::key::HeaderKey;
use palisade::ratelimit::{Rate, RateLimitLayer};
use palisade::stack::ServerStack;
use palisade::timeout::TimeoutLayer;
use tower::util::ServiceFn;
use tower::{service_fn, Layer, Service, ServiceBuilder};

const TENANTS: usize = 1_000;
const TIMEOUT: Duration = Duration::from_secs(1);
const MAX_CONCURRENT: usize = 1024;

type HandlerFuture = Ready<Result<Response<Empty<Bytes>>, BoxError>>;

/// The no-op handler's type (named, so `bench_layer` can take any layer over it).
type Handler = ServiceFn<fn(Request<()>) -> HandlerFuture>;

/// The no-op handler: an empty `200` for every request, ready at first poll.
fn ok_service() -> Handler {
    fn handle(_req: Request<()>) -> HandlerFuture {
        ready(Ok(Response::new(Empty::new())))
    }
    service_fn(handle as fn(Request<()>) -> HandlerFuture)
}

fn tenants() -> Vec<HeaderValue> {
    (0..TENANTS)
        .map(|i| HeaderValue::try_from(format!("tenant-{i:04}")).unwrap())
        .collect()
}

/// A request for tenant `i` (building it is part of every variant, bare included).
fn req(keys: &[HeaderValue], i: usize) -> Request<()> {
    let mut r = Request::new(());
    r.headers_mut()
        .insert("x-tenant-id", keys[i % TENANTS].clone());
    r
}

fn gate() -> palisade::degrade::Builder {
    GateLayer::builder().name("api")
}

fn rate_limit() -> palisade::ratelimit::Builder<HeaderKey> {
    RateLimitLayer::builder(HeaderKey::from_static("x-tenant-id"))
        .default_rate(Rate::per_second(u32::MAX).burst(1_000_000))
        .max_keys(10_000)
}

fn bulkhead() -> palisade::bulkhead::Builder {
    BulkheadLayer::builder()
        .name("api")
        .max_concurrent(MAX_CONCURRENT)
}

fn timeout() -> palisade::timeout::TimeoutBuilder {
    TimeoutLayer::builder().timeout(TIMEOUT)
}

fn fallback() -> palisade::fallback::Builder<StaticResponse> {
    FallbackLayer::builder().static_response(
        StaticResponse::new(StatusCode::SERVICE_UNAVAILABLE).body("temporarily unavailable"),
    )
}

fn breaker() -> palisade::breaker::Builder {
    CircuitBreakerLayer::builder().name("app")
}

fn chaos() -> palisade::chaos::Builder {
    ChaosLayer::builder().name("app").seed(1)
}

/// Calls `svc` once per tenant, so every tenant's rate-limit bucket exists before measuring.
fn warm<S>(svc: &mut S, keys: &[HeaderValue])
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    for i in 0..TENANTS {
        common::call(svc, req(keys, i));
    }
}

fn server_stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keys = tenants();
    let health = Health::new();
    let (audit, _log) = Audit::memory(1024);
    let mut g = c.benchmark_group("server_stack");
    let mut i = 0usize;

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut bare, req(&keys, i)))
        })
    });

    let full = ServerStack::builder()
        .health(&health)
        .audit(&audit)
        .gate(gate())
        .rate_limit(rate_limit())
        .bulkhead(bulkhead())
        .timeout(timeout())
        .fallback(fallback())
        .breaker(breaker())
        .chaos(chaos())
        .build()
        .expect("valid stack");
    let mut palisade = full.layer(ok_service());
    warm(&mut palisade, &keys);
    g.bench_function("palisade", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut palisade, req(&keys, i)))
        })
    });
    // What axum and hyper-util do per request: clone the service, call the clone, drop it.
    let bare_proto = ok_service();
    g.bench_function("bare_clone_per_request", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let mut svc = bare_proto; // a fn service is `Copy`: its clone is free
            black_box(common::call(&mut svc, req(&keys, i)))
        })
    });
    let palisade_proto = palisade.clone();
    g.bench_function("palisade_clone_per_request", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let mut svc = palisade_proto.clone();
            black_box(common::call(&mut svc, req(&keys, i)))
        })
    });

    // What a config file produces: every slot an `Option`, here all `Some`.
    let maybe = ServerStack::builder()
        .health(&health)
        .audit(&audit)
        .gate(Some(gate()))
        .rate_limit(Some(rate_limit()))
        .bulkhead(Some(bulkhead()))
        .timeout(Some(timeout()))
        .fallback(Some(fallback()))
        .breaker(Some(breaker()))
        .chaos(Some(chaos()))
        .build()
        .expect("valid stack");
    let mut palisade_maybe = maybe.layer(ok_service());
    warm(&mut palisade_maybe, &keys);
    g.bench_function("palisade_maybe_all_some", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut palisade_maybe, req(&keys, i)))
        })
    });

    let mut tower_stack = ServiceBuilder::new()
        .concurrency_limit(MAX_CONCURRENT)
        .timeout(TIMEOUT)
        .service(ok_service());
    g.bench_function("tower_limit_timeout", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut tower_stack, req(&keys, i)))
        })
    });

    let mut resilience = ServiceBuilder::new()
        .layer(
            tower_resilience::ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(usize::MAX / 2)
                .refresh_period(Duration::from_secs(1))
                .timeout_duration(Duration::from_millis(500))
                .build()
                .expect("valid config"),
        )
        .layer(
            tower_resilience::bulkhead::BulkheadLayer::builder()
                .max_concurrent_calls(MAX_CONCURRENT)
                .reject_when_full()
                .build()
                .expect("valid config"),
        )
        .layer(
            tower_resilience::timelimiter::TimeLimiterLayer::builder()
                .timeout_duration(TIMEOUT)
                .cancel_running_future(true)
                .build(),
        )
        .layer(
            tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
                .failure_rate_threshold(0.5)
                .sliding_window_size(100)
                .build()
                .expect("valid config"),
        )
        .service(ok_service());
    g.bench_function("tower_resilience_stack", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut resilience, req(&keys, i)))
        })
    });
    g.finish();
}

/// Benches `layer` over the no-op handler as `name` in `g`, after warming every tenant, and prints the
/// size of its response future (moving nested futures is part of a deep stack's cost).
fn bench_layer<L>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    layer: L,
    keys: &[HeaderValue],
) where
    L: Layer<Handler>,
    L::Service: Service<Request<()>>,
    <L::Service as Service<Request<()>>>::Error: std::fmt::Debug,
{
    let mut svc = layer.layer(ok_service());
    warm(&mut svc, keys);
    let future_bytes = std::mem::size_of_val(&svc.call(req(keys, 0)));
    eprintln!("server_stack_layers/{name}: response future is {future_bytes} bytes");
    let mut i = 0usize;
    g.bench_function(name, |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(common::call(&mut svc, req(keys, i)))
        })
    });
}

/// Where the time goes: the server stack grown one slot at a time from the handler outwards, so each
/// step's difference from the previous one is that layer's marginal cost in the full stack.
fn server_stack_layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let keys = tenants();
    let health = Health::new();
    let (audit, _log) = Audit::memory(1024);
    let mut g = c.benchmark_group("server_stack_layers");
    let base = || ServerStack::builder().health(&health).audit(&audit);

    bench_layer(&mut g, "0_bare", tower::layer::util::Identity::new(), &keys);
    bench_layer(&mut g, "1_rescue", base().build().unwrap(), &keys);
    bench_layer(
        &mut g,
        "2_+chaos",
        base().chaos(chaos()).build().unwrap(),
        &keys,
    );
    let stack = base().chaos(chaos()).breaker(breaker()).build().unwrap();
    bench_layer(&mut g, "3_+breaker", stack, &keys);
    let stack = base()
        .chaos(chaos())
        .breaker(breaker())
        .fallback(fallback())
        .build()
        .unwrap();
    bench_layer(&mut g, "4_+fallback", stack, &keys);
    let stack = base()
        .chaos(chaos())
        .breaker(breaker())
        .fallback(fallback())
        .timeout(timeout())
        .build()
        .unwrap();
    bench_layer(&mut g, "5_+timeout", stack, &keys);
    let stack = base()
        .chaos(chaos())
        .breaker(breaker())
        .fallback(fallback())
        .timeout(timeout())
        .bulkhead(bulkhead())
        .build()
        .unwrap();
    bench_layer(&mut g, "6_+bulkhead", stack, &keys);
    let stack = base()
        .chaos(chaos())
        .breaker(breaker())
        .fallback(fallback())
        .timeout(timeout())
        .bulkhead(bulkhead())
        .rate_limit(rate_limit())
        .build()
        .unwrap();
    bench_layer(&mut g, "7_+rate_limit", stack, &keys);
    let stack = base()
        .chaos(chaos())
        .breaker(breaker())
        .fallback(fallback())
        .timeout(timeout())
        .bulkhead(bulkhead())
        .rate_limit(rate_limit())
        .gate(gate())
        .build()
        .unwrap();
    bench_layer(&mut g, "8_+gate", stack, &keys);
    g.finish();
}

criterion_group!(benches, server_stack, server_stack_layers);
criterion_main!(benches);
