//! The hedge layer on its happy path — a hedgeable request (`GET /`, empty body, built with `Request::new`) whose first attempt
//! answers at once, so no hedge fires — side by side with a bare service and the peers: tower's `Hedge`
//! (p95 of a rotating histogram, no minimum of data points, so every request is eligible) and
//! tower-resilience's `HedgeLayer` (fixed 100 ms delay, 2 attempts).
//!
//! Run: `cargo bench -p palisade-hedge --bench hedge`. Each iteration calls `poll_ready`, `call`, and
//! polls the response future once with a no-op waker (every service here is ready at first poll), so
//! the numbers are per-request overhead. Every layer keeps a copy of the request head and a clone of the
//! inner service per request so that it could hedge; palisade also counts the request in its budget.
//! The timers need a runtime: the bench runs inside a current-thread tokio runtime's context.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Empty;
use palisade_core::error::BoxError;
use palisade_hedge::{HedgeBody, HedgeDelay, HedgeLayer, LatencyPercentile};
use tower::{service_fn, Layer, Service};

type Req = Request<Empty<Bytes>>;
type Res = Response<Empty<Bytes>>;

/// One request: `poll_ready`, `call`, one poll of the response future; panics if it is not ready at once.
fn call_once<S>(svc: &mut S) -> S::Response
where
    S: Service<Req>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let fut = pin!(svc.call(Request::new(Empty::new())));
    match fut.poll(&mut cx) {
        Poll::Ready(res) => res.expect("the bench services do not fail"),
        Poll::Pending => panic!("the bench services are ready at first poll"),
    }
}

/// tower's hedge policy: every request may be hedged.
#[derive(Clone, Debug)]
struct Always;

impl tower::hedge::Policy<Req> for Always {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }

    fn can_retry(&self, _: &Req) -> bool {
        true
    }
}

fn hedge_happy_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("hedge_happy_path");

    let mut bare = service_fn(|_req: Req| async { Ok::<_, BoxError>(Res::new(Empty::new())) });
    g.bench_function("bare", |b| b.iter(|| black_box(call_once(&mut bare))));

    // A fixed delay: the first attempt answers at its first poll, so no clock is read and no timer armed.
    let mut fixed = HedgeLayer::builder()
        .delay(Duration::from_millis(100))
        .build()
        .unwrap()
        .layer(service_fn(|_req: Request<HedgeBody<Empty<Bytes>>>| async {
            Ok::<_, BoxError>(Res::new(Empty::new()))
        }));
    g.bench_function("palisade_fixed", |b| {
        b.iter(|| black_box(call_once(&mut fixed)))
    });

    // The default p95 estimator, warmed up so it has an estimate: each request is also measured.
    let p95 = LatencyPercentile::new();
    for _ in 0..200 {
        p95.record(Duration::from_millis(5), tokio::time::Instant::now());
    }
    let mut estimated = HedgeLayer::builder()
        .delay_from(p95)
        .build()
        .unwrap()
        .layer(service_fn(|_req: Request<HedgeBody<Empty<Bytes>>>| async {
            Ok::<_, BoxError>(Res::new(Empty::new()))
        }));
    g.bench_function("palisade_p95", |b| {
        b.iter(|| black_box(call_once(&mut estimated)))
    });

    let mut tower_hedge = tower::hedge::Hedge::new::<Req>(
        service_fn(|_req: Req| async { Ok::<_, BoxError>(Res::new(Empty::new())) }),
        Always,
        0,
        0.95,
        Duration::from_secs(10),
    );
    g.bench_function("tower", |b| {
        b.iter(|| black_box(call_once(&mut tower_hedge)))
    });

    let mut resilience = tower_resilience::hedge::HedgeLayer::builder()
        .delay(Duration::from_millis(100))
        .max_hedged_attempts(2)
        .build()
        .layer(service_fn(|_req: Req| async {
            Ok::<_, Infallible>(Res::new(Empty::new()))
        }));
    g.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(call_once(&mut resilience)))
    });

    g.finish();
}

criterion_group!(benches, hedge_happy_path);
criterion_main!(benches);
