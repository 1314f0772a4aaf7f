//! Drives the recorder layer and a bare service for a given number of calls, so that their per-call
//! instruction counts can be measured with valgrind (the tests themselves check every call was
//! recorded). Run a test twice with different call counts and divide the difference:
//!
//! ```text
//! cargo test --release -p palisade-heal --test recorder_callgrind --no-run
//! RECORDER_CALLS=100000 valgrind --tool=callgrind target/release/deps/recorder_callgrind-<hash> --exact layer
//! RECORDER_CALLS=200000 valgrind --tool=callgrind target/release/deps/recorder_callgrind-<hash> --exact layer
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use palisade_core::classify::Outcome;
use palisade_core::error::BoxError;
use palisade_heal::signals::recorder::{Recorder, RecorderConfig};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service};

fn calls() -> u64 {
    std::env::var("RECORDER_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn ok_service(
) -> impl Service<Request<()>, Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(|_req: Request<()>| async { Ok::<_, BoxError>(Response::new(String::new())) })
}

/// `poll_ready`, `call`, and polls until ready: what the criterion bench does per iteration.
#[inline(never)]
fn call<S: Service<Request<()>>>(svc: &mut S) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(Request::new(())));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            return res.expect("the service succeeds");
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn bare() {
    let rt = runtime();
    let _g = rt.enter();
    let mut svc = ok_service();
    let mut n = 0u64;
    for _ in 0..calls() {
        let res = call(&mut svc);
        n += u64::from(res.status().is_success());
        black_box(res);
    }
    assert_eq!(n, calls());
}

#[test]
fn layer() {
    let rt = runtime();
    let _g = rt.enter();
    let recorder = Recorder::new("callgrind", &RecorderConfig::default());
    let mut svc = recorder.layer().layer(ok_service());
    for _ in 0..calls() {
        black_box(call(&mut svc));
    }
    assert_eq!(recorder.totals().requests, calls());
}

#[test]
fn record_at() {
    let rt = runtime();
    let _g = rt.enter();
    let recorder = Recorder::new("callgrind", &RecorderConfig::default());
    let at = Instant::now();
    for i in 0..calls() {
        recorder.record_at(
            black_box(at),
            black_box(Duration::from_micros(1 + i % 1000)),
            Outcome::Success,
        );
    }
    assert_eq!(recorder.totals().requests, calls());
}
