//! The retry layer on its success path — a retryable request (`GET`, empty body) whose first attempt
//! succeeds — side by side with a bare service and the peer, tower's `Retry` with a policy that retries
//! errors up to 4 times and clones the request up front (as tower's docs recommend).
//!
//! Run: `cargo bench --bench retry --features retry`. Each iteration calls `poll_ready`, `call`, and polls
//! the response future once with a no-op waker (every service here is ready at first poll), so the
//! numbers are per-request overhead. Both layers keep a copy of the request head and a clone of the inner
//! service per request so that they could retry; palisade also counts the request in its retry budget.

use std::fmt::Debug;
use std::future::{ready, Future, Ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::Empty;
use palisade::error::BoxError;
use palisade::retry::{RetryBody, RetryLayer};
use tower::retry::Policy;
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

/// tower's retry policy: retry errors up to `remaining` more times, immediately; clone every request.
#[derive(Clone, Debug)]
struct RetryErrors {
    remaining: usize,
}

impl Policy<Req, Res, BoxError> for RetryErrors {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Self::Future> {
        match result {
            Err(_) if self.remaining > 0 => {
                self.remaining -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

fn retry_success(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry_success");

    let mut bare =
        service_fn(|_req: Req| async { Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new())) });
    g.bench_function("bare", |b| b.iter(|| black_box(call_once(&mut bare))));

    // Defaults: 5 attempts, exponential backoff with jitter, budget 20 % + 10/s over 10 s.
    let mut palisade =
        RetryLayer::new().layer(service_fn(|_req: Request<RetryBody<Empty<Bytes>>>| async {
            Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new()))
        }));
    g.bench_function("palisade", |b| {
        b.iter(|| black_box(call_once(&mut palisade)))
    });

    let mut tower_retry = tower::retry::RetryLayer::new(RetryErrors { remaining: 4 }).layer(
        service_fn(|_req: Req| async { Ok::<_, BoxError>(Response::new(Empty::<Bytes>::new())) }),
    );
    g.bench_function("tower", |b| {
        b.iter(|| black_box(call_once(&mut tower_retry)))
    });

    g.finish();
}

criterion_group!(benches, retry_success);
criterion_main!(benches);
