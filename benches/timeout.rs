//! The timeout layer on its fast path — the inner future is ready at first poll — side by side with a
//! bare service and the peers: tower's `Timeout` and tower-resilience's `TimeLimiter`.
//!
//! Run: `cargo bench --bench timeout --features timeout`. Each iteration calls `poll_ready`, `call`, and
//! polls the response future once with a no-op waker (every service here is ready at first poll), so the
//! numbers are per-request overhead. Both peers create their tokio timer eagerly, which needs a runtime
//! context, so the whole group runs inside one (entered, never driven); palisade's layer arms its timer
//! only when the inner future is pending, so on this path it never touches the runtime.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use palisade::timeout::TimeoutLayer;
use tower::{service_fn, Layer, Service};
use tower_resilience::timelimiter::TimeLimiterLayer;

const TIMEOUT: Duration = Duration::from_secs(1);

/// One request: `poll_ready`, `call`, one poll of the response future; panics if it is not ready at once.
fn call_once<S>(svc: &mut S) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let fut = pin!(svc.call(Request::new(())));
    match fut.poll(&mut cx) {
        Poll::Ready(res) => res.expect("the bench services do not fail"),
        Poll::Pending => panic!("the bench services are ready at first poll"),
    }
}

/// The no-op inner service: a ready `200` for every request.
fn ok_service() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<()>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn timeout_ready(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let _guard = rt.enter();

    let mut g = c.benchmark_group("timeout_ready");

    let mut bare = ok_service();
    g.bench_function("bare", |b| b.iter(|| black_box(call_once(&mut bare))));

    let layer = TimeoutLayer::builder()
        .timeout(TIMEOUT)
        .build()
        .expect("a valid timeout");
    let mut palisade = layer.layer(ok_service());
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(call_once(&mut palisade)))
    });

    let mut tower = tower::timeout::TimeoutLayer::new(TIMEOUT).layer(ok_service());
    g.bench_function("tower", |b| b.iter(|| black_box(call_once(&mut tower))));

    // As tower-resilience's docs configure it: a fixed duration, cancelling the call on timeout.
    let mut tower_resilience = TimeLimiterLayer::builder()
        .timeout_duration(TIMEOUT)
        .cancel_running_future(true)
        .build()
        .layer(ok_service());
    g.bench_function("tower_resilience", |b| {
        b.iter(|| black_box(call_once(&mut tower_resilience)))
    });

    g.finish();
}

criterion_group!(benches, timeout_ready);
criterion_main!(benches);
