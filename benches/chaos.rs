//! The chaos layer when it injects nothing: `chaos_off` compares a bare service, palisade's chaos layer
//! with no fault active (the production-like case: one atomic load), and the same layer with a fault
//! active that targets another path (`palisade_active_miss`: the request reads the fault set and
//! evaluates it, then passes).
//!
//! Run: `cargo bench --bench chaos --features chaos`. Each iteration is `poll_ready` + `call` + one poll
//! of the response future with a no-op waker; the inner service is ready at once.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use palisade::chaos::{ChaosLayer, Fault};
use palisade::error::BoxError;
use tower::{service_fn, Layer, Service};

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

fn chaos_off(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("chaos_off");

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| black_box(common::call(&mut bare, Request::new(()))))
    });

    let mut palisade = ChaosLayer::builder().seed(1).build().layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(common::call(&mut palisade, Request::new(()))))
    });

    // A fault is active, but for another path: the request pays for the lookup and passes.
    let layer = ChaosLayer::builder().seed(1).build();
    layer
        .handle()
        .inject(Fault::status(StatusCode::SERVICE_UNAVAILABLE).path_prefix("/other"));
    let mut miss = layer.layer(ok_service());
    assert_eq!(
        common::call(&mut miss, Request::new(())).status(),
        StatusCode::OK
    );
    g.bench_function("palisade_active_miss", |b| {
        b.iter(|| black_box(common::call(&mut miss, Request::new(()))))
    });
    g.finish();
}

criterion_group!(benches, chaos_off);
criterion_main!(benches);
