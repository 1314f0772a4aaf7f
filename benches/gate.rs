//! The degradation gate on the happy path: `gate` compares a bare service with the gate at `Normal`
//! without automatic mode (one atomic load; budget 5 ns over bare), and, for information, the gate
//! admitting a critical request at `Degraded` (route table lookup) and the gate at `Normal` in
//! automatic mode (clock reads, in-flight count, latency sample).
//!
//! Run: `cargo bench --bench gate --features degrade`. Each iteration is `poll_ready` + `call` + polling
//! the response future to completion with a no-op waker; the inner service is ready at once.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use palisade::degrade::{GateLayer, Level, Priority};
use palisade::error::BoxError;
use tower::{service_fn, Layer, Service};

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn gate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("gate");

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| black_box(common::call(&mut bare, Request::new(()))))
    });

    let mut normal = GateLayer::builder()
        .build()
        .expect("default config")
        .layer(ok_service());
    g.bench_function("palisade_normal", |b| {
        b.iter(|| black_box(common::call(&mut normal, Request::new(()))))
    });

    let degraded = GateLayer::builder()
        .route("/api/pay", Priority::Critical)
        .route("/reports", Priority::Background)
        .initial_level(Level::Degraded)
        .build()
        .expect("valid config");
    let mut degraded = degraded.layer(ok_service());
    g.bench_function("palisade_degraded_admit", |b| {
        b.iter(|| {
            let req = Request::get("/api/pay/1").body(()).unwrap();
            black_box(common::call(&mut degraded, req))
        })
    });

    let mut auto = GateLayer::builder()
        .auto_in_flight(Level::Degraded, 10_000, 5_000)
        .auto_latency_p95(
            Level::Critical,
            Duration::from_secs(2),
            Duration::from_secs(1),
        )
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade_auto_normal", |b| {
        b.iter(|| black_box(common::call(&mut auto, Request::new(()))))
    });
    g.finish();
}

criterion_group!(benches, gate);
criterion_main!(benches);
