//! The adaptive limiter on the happy path, in one group: a bare service, palisade's adaptive limiter
//! (Gradient2 defaults; calls faster than the 100 µs RTT threshold are not sampled, as in production
//! for cache-speed calls), palisade with every call sampled (threshold zero: the window accounting on
//! every call), and tower-resilience's adaptive limiter (AIMD, as its docs show).
//!
//! Run: `cargo bench -p palisade-adaptive --bench adaptive`. Each iteration is `poll_ready` + `call` +
//! polling the response future to completion with a no-op waker; the inner service is ready at once.

use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_adaptive::{AdaptiveLayer, Gradient2};
use palisade_core::error::BoxError;
use tower::{service_fn, Layer, Service};

/// Calls `svc` once and polls the response future to completion.
#[inline]
fn call<S, Req>(svc: &mut S, req: Req) -> S::Response
where
    S: Service<Req>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..16 {
        if let Poll::Ready(r) = svc.poll_ready(&mut cx) {
            r.expect("ready");
            break;
        }
    }
    let mut fut = pin!(svc.call(req));
    for _ in 0..16 {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            return res.expect("the bench service succeeds");
        }
    }
    panic!("the response future did not complete");
}

fn ok_service() -> impl Service<u64, Response = u64, Error = BoxError, Future = impl Send> + Clone {
    service_fn(|req: u64| async move { Ok::<_, BoxError>(req) })
}

fn adaptive(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("adaptive");

    let mut bare = ok_service();
    g.bench_function("bare", |b| b.iter(|| black_box(call(&mut bare, 1))));

    let mut palisade = AdaptiveLayer::builder()
        .algorithm(Gradient2::new().initial_limit(1024).max_limit(4096))
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade", |b| b.iter(|| black_box(call(&mut palisade, 1))));

    let mut sampled = AdaptiveLayer::builder()
        .algorithm(Gradient2::new().initial_limit(1024).max_limit(4096))
        .min_rtt_threshold(Duration::ZERO)
        .build()
        .expect("valid config")
        .layer(ok_service());
    g.bench_function("palisade_every_call_sampled", |b| {
        b.iter(|| black_box(call(&mut sampled, 1)))
    });

    let mut peer = tower_resilience_adaptive::AdaptiveLimiterLayer::new(
        tower_resilience_adaptive::Aimd::builder()
            .initial_limit(1024)
            .min_limit(1)
            .max_limit(4096)
            .latency_threshold(Duration::from_millis(100))
            .build()
            .expect("valid config"),
    )
    .layer(ok_service());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(call(&mut peer, 1)))
    });
    g.finish();
}

criterion_group!(benches, adaptive);
criterion_main!(benches);
