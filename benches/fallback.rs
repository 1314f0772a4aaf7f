//! The fallback layer on the success path: `fallback_success` compares a bare service with palisade's
//! fallback (static-response kind, default trigger) wrapped around it; the inner service succeeds, so
//! the fallback is never served.
//!
//! Run: `cargo bench --bench fallback --features fallback`. Each iteration is `poll_ready` + `call` +
//! polling the response future to completion with a no-op waker; the inner service is ready at once.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use palisade::error::BoxError;
use palisade::fallback::{FallbackLayer, StaticResponse};
use tower::{service_fn, Layer, Service};

fn ok_service() -> impl Service<
    Request<()>,
    Response = Response<http_body_util::Empty<bytes::Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(|_req: Request<()>| async {
        Ok::<_, BoxError>(Response::new(http_body_util::Empty::new()))
    })
}

fn fallback_success(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("fallback_success");

    let mut bare = ok_service();
    g.bench_function("bare", |b| {
        b.iter(|| black_box(common::call(&mut bare, Request::new(()))))
    });

    let mut palisade = FallbackLayer::builder()
        .static_response(
            StaticResponse::new(StatusCode::SERVICE_UNAVAILABLE).body("temporarily unavailable"),
        )
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(common::call(&mut palisade, Request::new(()))))
    });
    g.finish();
}

criterion_group!(benches, fallback_success);
criterion_main!(benches);
