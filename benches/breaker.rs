//! The closed breaker on the happy path: `breaker_closed` compares a bare service, palisade's breaker
//! (default config: failure rate over a 100-call window, gRPC/HTTP classification) and
//! tower-resilience's circuit breaker (configured as its docs show: failure rate 0.5, window 100).
//!
//! Run: `cargo bench --bench breaker --features breaker`. Each iteration is `poll_ready` + `call` + polling
//! the response future to completion with a no-op waker; the inner service is ready at once.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use palisade::breaker::CircuitBreakerLayer;
use palisade::error::BoxError;
use tower::{service_fn, Layer, Service};

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn breaker_closed(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("breaker_closed");

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| black_box(common::call(&mut bare, Request::new(()))))
    });

    let mut palisade = CircuitBreakerLayer::builder()
        .build()
        .expect("default config")
        .layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(common::call(&mut palisade, Request::new(()))))
    });

    let mut consecutive = CircuitBreakerLayer::builder()
        .no_failure_rate()
        .consecutive_failures(5)
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade_consecutive_only", |b| {
        b.iter(|| black_box(common::call(&mut consecutive, Request::new(()))))
    });

    let mut tower_resilience = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(common::call(&mut tower_resilience, Request::new(()))))
    });
    g.finish();
}

criterion_group!(benches, breaker_closed);
criterion_main!(benches);
