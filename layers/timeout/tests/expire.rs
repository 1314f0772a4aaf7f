//! When the budget runs out the inner future is dropped at once, inside
//! `palisade_core::deadline::expire` if the budget was the layer's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use palisade_core::deadline::expiring;
use palisade_core::error::{BoxError, Elapsed};
use palisade_timeout::TimeoutLayer;
use tower::{service_fn, Layer, ServiceExt};

/// Never ready; records, when dropped, whether it was dropped by an expiring deadline.
struct Hang(Arc<Mutex<Option<bool>>>);

impl Future for Hang {
    type Output = Result<Response<()>, BoxError>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Pending
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(expiring());
    }
}

async fn run(layer: TimeoutLayer, req: Request<()>) -> Option<bool> {
    let seen = Arc::new(Mutex::new(None));
    let s = seen.clone();
    let svc = layer.layer(service_fn(move |_: Request<()>| Hang(s.clone())));
    let mut fut = std::pin::pin!(svc.oneshot(req));
    let err = std::future::poll_fn(|cx| fut.as_mut().poll(cx))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some());
    // The outer future is still alive here: the inner one must already be gone.
    let dropped = *seen.lock().unwrap();
    dropped
}

#[tokio::test(start_paused = true)]
async fn the_own_budget_drops_the_inner_future_at_once_as_expiring() {
    let layer = TimeoutLayer::new(Duration::from_secs(1)).unwrap();
    assert_eq!(run(layer, Request::new(())).await, Some(true));
    assert!(!expiring(), "the scope ends with the drop");
}

#[tokio::test(start_paused = true)]
async fn a_callers_shorter_deadline_drops_it_but_not_as_expiring() {
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(10))
        .grpc_timeout(true)
        .build()
        .unwrap();
    let req = Request::builder()
        .header("grpc-timeout", "100m")
        .body(())
        .unwrap();
    assert_eq!(run(layer, req).await, Some(false));
}
