//! Rescue on the happy path, side by side with a bare service and with the peer equivalent, axum's
//! `HandleErrorLayer` (the usual way to make a fallible Tower stack `Infallible` for `Router::layer`).
//! Also the rejection path: the cost of turning a marker into a problem response.
//!
//! Run: `cargo bench --bench rescue`. Each iteration calls the service and polls its future once with a
//! no-op waker (every service here is ready at first poll), so the numbers are per-request overhead.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::response::IntoResponse;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use palisade::error::{BoxError, RateLimited};
use palisade::rescue::{Protocol, RescueLayer};
use tower::{service_fn, Layer, Service};

/// Calls `svc` once and polls the response future to completion; panics if it is not ready at once.
fn call_once<S, B>(svc: &mut S) -> S::Response
where
    S: Service<Request<B>>,
    B: Default,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    let fut = pin!(svc.call(Request::new(B::default())));
    match fut.poll(&mut cx) {
        Poll::Ready(res) => res.expect("infallible here"),
        Poll::Pending => panic!("the bench services are ready at first poll"),
    }
}

fn ok_service() -> impl Service<
    Request<axum::body::Body>,
    Response = Response<Empty<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(|_req: Request<axum::body::Body>| async {
        Ok::<_, BoxError>(Response::new(Empty::new()))
    })
}

fn rejecting_service() -> impl Service<
    Request<axum::body::Body>,
    Response = Response<Empty<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(|_req: Request<axum::body::Body>| async {
        Err::<Response<Empty<Bytes>>, BoxError>(RateLimited::new(Duration::from_secs(1)).into())
    })
}

async fn handle_error(err: BoxError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

fn happy_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("rescue/happy");
    let mut bare = ok_service();
    g.bench_function("bare", |b| b.iter(|| black_box(call_once(&mut bare))));

    let mut rescued = RescueLayer::new().layer(ok_service());
    assert_infallible(&rescued);
    g.bench_function("palisade_rescue_auto", |b| {
        b.iter(|| black_box(call_once(&mut rescued)))
    });

    let mut rescued_http = RescueLayer::new()
        .protocol(Protocol::Http)
        .layer(ok_service());
    g.bench_function("palisade_rescue_http", |b| {
        b.iter(|| black_box(call_once(&mut rescued_http)))
    });

    let mut axum_handle_error = HandleErrorLayer::new(handle_error).layer(ok_service());
    g.bench_function("axum_handle_error", |b| {
        b.iter(|| black_box(call_once(&mut axum_handle_error).into_response()))
    });
    g.finish();
}

fn rejection_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("rescue/rejected");
    let mut rescued = RescueLayer::new().layer(rejecting_service());
    g.bench_function("palisade_rescue_problem_json", |b| {
        b.iter(|| black_box(call_once(&mut rescued)))
    });
    let mut axum_handle_error = HandleErrorLayer::new(handle_error).layer(rejecting_service());
    g.bench_function("axum_handle_error_text", |b| {
        b.iter(|| black_box(call_once(&mut axum_handle_error).into_response()))
    });
    g.finish();
}

/// Compile-time check: the rescued service never fails, so it fits `axum::Router::layer`.
fn assert_infallible<S: Service<Request<axum::body::Body>, Error = Infallible>>(_: &S) {}

criterion_group!(benches, happy_path, rejection_path);
criterion_main!(benches);
