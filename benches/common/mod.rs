//! What every bench shares: driving a service once, on the caller's thread, with a no-op waker.

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower::Service;

/// Calls `svc` once with `req` and polls the response future until it is ready (a few polls at most:
/// the bench services never wait). Panics if the service is not ready, fails, or does not complete.
#[inline]
pub(crate) fn call<S, Req>(svc: &mut S, req: Req) -> S::Response
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
