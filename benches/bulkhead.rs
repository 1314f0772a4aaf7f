//! The bulkhead on the happy path: `bulkhead` compares a bare service, palisade's bulkhead (reject when
//! full, unkeyed, capacity high enough that every call is admitted), tower's `ConcurrencyLimit` and
//! tower-resilience's bulkhead (configured as its docs show: `max_concurrent_calls`,
//! `reject_when_full`).
//!
//! Run: `cargo bench --bench bulkhead --features bulkhead`. Each iteration is `poll_ready` + `call` +
//! polling the response future to completion with a no-op waker; the inner service is ready at once.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use palisade::bulkhead::BulkheadLayer;
use palisade::error::BoxError;
use tower::{service_fn, Layer, Service};

/// Calls `svc` once and polls the response future until it is ready (a few polls at most).
fn call_once<S: Service<Request<()>>>(svc: &mut S) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..16 {
        if let Poll::Ready(r) = svc.poll_ready(&mut cx) {
            r.expect("ready");
            break;
        }
    }
    let mut fut = pin!(svc.call(Request::new(())));
    for _ in 0..16 {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            return res.expect("the bench service succeeds");
        }
    }
    panic!("the response future did not complete");
}

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
    g.bench_function("bare", |b| b.iter(|| black_box(call_once(&mut bare))));

    let mut palisade = BulkheadLayer::builder()
        .max_concurrent(1024)
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(call_once(&mut palisade)))
    });

    let mut tower_limit = tower::limit::ConcurrencyLimitLayer::new(1024).layer(ok_service());
    g.bench_function("tower_concurrency_limit", |b| {
        b.iter(|| black_box(call_once(&mut tower_limit)))
    });

    let mut tower_resilience = tower_resilience::bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1024)
        .reject_when_full()
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(call_once(&mut tower_resilience)))
    });
    g.finish();
}

criterion_group!(benches, bulkhead);
criterion_main!(benches);
