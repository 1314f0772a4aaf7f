//! The latency and outcome recorder on the request path: `heal_recorder` compares a bare service with
//! the same service behind palisade's `RecordLayer` (default gRPC/HTTP classification, and plain HTTP
//! status classification); `heal_recorder_parts` splits the layer's cost into the clock and the
//! recording itself.
//!
//! Run: `cargo bench --bench heal_recorder --features heal`. Each iteration of `heal_recorder` is
//! `poll_ready` + `call` + polling the response future to completion with a no-op waker; the inner
//! service is ready at once. The layer reads `tokio::time::Instant::now()` twice per call (at `call`
//! and when the response resolves); `heal_recorder_parts/clock` is the price of one such read.

mod common;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use palisade::classify::{HttpStatus, Outcome};
use palisade::error::BoxError;
use palisade::heal::signals::recorder::{RecorderConfig, Recorders};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service};

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn heal_recorder(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let recorders = Recorders::new(RecorderConfig::default());
    let mut g = c.benchmark_group("heal_recorder");

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| black_box(common::call(&mut bare, Request::new(()))))
    });

    let mut palisade = recorders
        .layer("GET /")
        .expect("registry has room")
        .layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(common::call(&mut palisade, Request::new(()))))
    });

    let mut http_status = recorders
        .layer("GET /http")
        .expect("registry has room")
        .classify(HttpStatus::server_errors())
        .layer(ok_service());
    g.bench_function("palisade_http_status", |b| {
        b.iter(|| black_box(common::call(&mut http_status, Request::new(()))))
    });
    g.finish();

    let mut g = c.benchmark_group("heal_recorder_parts");
    g.bench_function("clock", |b| b.iter(|| black_box(Instant::now())));
    let handle = recorders.recorder("handle").expect("registry has room");
    let at = Instant::now();
    let latency = Duration::from_micros(1234);
    g.bench_function("record_at", |b| {
        b.iter(|| handle.record_at(black_box(at), black_box(latency), Outcome::Success))
    });
    g.bench_function("record", |b| {
        b.iter(|| handle.record(black_box(latency), Outcome::Success))
    });
    g.finish();
}

criterion_group!(benches, heal_recorder);
criterion_main!(benches);
