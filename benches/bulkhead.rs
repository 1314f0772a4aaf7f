//! The bulkhead on the happy path: `bulkhead` compares a bare service, palisade's bulkhead (reject when
//! full, unkeyed, capacity high enough that every call is admitted), tower's `ConcurrencyLimit` and
//! tower-resilience's bulkhead (configured as its docs show: `max_concurrent_calls`,
//! `reject_when_full`).
//!
//! Run: `cargo bench --bench bulkhead --features bulkhead`. Each iteration is `poll_ready` + `call` +
//! polling the response future to completion with a no-op waker; the inner service is ready at once.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use palisade::bulkhead::BulkheadLayer;
use palisade::error::BoxError;
use tower::{service_fn, Layer, Service};

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn bulkhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("bulkhead");

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| black_box(common::call(&mut bare, Request::new(()))))
    });

    let mut palisade = BulkheadLayer::builder()
        .max_concurrent(1024)
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(common::call(&mut palisade, Request::new(()))))
    });

    let mut tower_limit = tower::limit::ConcurrencyLimitLayer::new(1024).layer(ok_service());
    g.bench_function("tower_concurrency_limit", |b| {
        b.iter(|| black_box(common::call(&mut tower_limit, Request::new(()))))
    });

    let mut tower_resilience = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1024)
        .reject_when_full()
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(common::call(&mut tower_resilience, Request::new(()))))
    });
    g.finish();
}

criterion_group!(benches, bulkhead);
criterion_main!(benches);
