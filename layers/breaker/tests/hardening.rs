//! Hardening: clearing the time window, failing fast when the inner service is not ready, cancelled
//! calls that must count, builder bounds, keyed lookups. On paused time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use palisade_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState, Thresholds};
use palisade_core::error::{BoxError, Elapsed};
use palisade_core::key::HeaderKey;
use palisade_timeout::TimeoutLayer;
use tower::{Layer, Service, ServiceExt};

type Fut = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

/// A stand-in service: readiness controlled by a flag (like a saturated `ConcurrencyLimit`, it hands
/// out a permit in `poll_ready` and panics on a `call` without one); answers by the `x-outcome` header
/// (ok, fail = 500, hang).
#[derive(Clone)]
struct Inner {
    ready: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    polled: Arc<AtomicUsize>,
    permit: bool,
}

impl Inner {
    fn new(ready: bool) -> Self {
        Inner {
            ready: Arc::new(AtomicBool::new(ready)),
            calls: Arc::default(),
            polled: Arc::default(),
            permit: false,
        }
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Inner {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        if self.permit || self.ready.load(Ordering::SeqCst) {
            self.permit = true;
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, req: Request<()>) -> Fut {
        assert!(
            std::mem::take(&mut self.permit),
            "called without readiness: poll_ready must be called first"
        );
        self.calls.fetch_add(1, Ordering::SeqCst);
        let outcome = req
            .headers()
            .get("x-outcome")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "ok".into());
        Box::pin(async move {
            match outcome.as_str() {
                "fail" => Ok(Response::builder().status(500).body(String::new())?),
                "hang" => std::future::pending().await,
                _ => Ok(Response::new(String::new())),
            }
        })
    }
}

fn req(outcome: &str) -> Request<()> {
    Request::builder()
        .header("x-outcome", outcome)
        .body(())
        .unwrap()
}

fn base() -> palisade_breaker::Builder {
    CircuitBreakerLayer::builder()
        .jitter(0.0)
        .open_wait(Duration::from_secs(2), Duration::from_secs(60))
}

async fn outcome<S>(svc: &S, r: Request<()>) -> Result<u16, BoxError>
where
    S: Service<Request<()>, Error = BoxError> + Clone,
    S::Response:
        Into<Response<palisade_breaker::ResponseBody<String, palisade_core::classify::Grpc>>>,
{
    let res: Response<_> = svc.clone().oneshot(r).await?.into();
    Ok(res.status().as_u16())
}

fn is_open(e: &BoxError) -> bool {
    e.downcast_ref::<CircuitOpen>().is_some()
}

// ---- item 3: clearing the time window clears it, at any age ----

fn hour_window() -> palisade_breaker::Builder {
    base()
        .failure_rate(0.5)
        .window_time(Duration::from_secs(3600))
        .minimum_calls(10)
}

#[tokio::test(start_paused = true)]
async fn force_closed_and_reset_clear_a_young_time_window() {
    for how in ["force_closed", "reset"] {
        let layer = hour_window().build().unwrap();
        let h = layer.handle();
        let svc = layer.layer(Inner::new(true));
        for _ in 0..10 {
            outcome(&svc, req("fail")).await.unwrap();
        }
        assert_eq!(h.state(), CircuitState::Open, "{how}");
        tokio::time::advance(Duration::from_secs(5)).await;
        match how {
            "force_closed" => h.force_closed(),
            _ => h.reset(),
        }
        assert_eq!(h.counts().window_calls, 0, "{how}: the window is empty");
        // One failure right after closing: 1 call is under minimum_calls, nothing to judge.
        outcome(&svc, req("fail")).await.unwrap();
        assert_eq!(h.state(), CircuitState::Closed, "{how}");
        assert_eq!(h.counts().window_calls, 1, "{how}");
        assert_eq!(h.counts().window_failures, 1, "{how}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_probe_closing_the_circuit_clears_a_young_time_window() {
    let layer = hour_window().build().unwrap();
    let h = layer.handle();
    let svc = layer.layer(Inner::new(true));
    for _ in 0..10 {
        outcome(&svc, req("fail")).await.unwrap();
    }
    assert_eq!(h.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(outcome(&svc, req("ok")).await.unwrap(), 200); // the probe
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.counts().window_calls, 0);
    outcome(&svc, req("fail")).await.unwrap();
    assert_eq!(h.state(), CircuitState::Closed, "one failure after closing");
}

// ---- item 4: an open breaker refuses at once, even when the inner service is not ready ----

fn poll_ready_now<S: Service<Request<()>>>(svc: &mut S) -> Poll<Result<(), S::Error>> {
    svc.poll_ready(&mut Context::from_waker(Waker::noop()))
}

#[tokio::test(start_paused = true)]
async fn forced_open_refuses_at_once_when_the_inner_service_is_not_ready() {
    let layer = base().build().unwrap();
    let h = layer.handle();
    let inner = Inner::new(false);
    let svc = layer.layer(inner.clone());
    h.force_open();
    let start = tokio::time::Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(req("ok")))
        .await
        .expect("refused at once, not after waiting for the inner service");
    assert!(is_open(&res.unwrap_err()));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(inner.calls(), 0);
    assert_eq!(h.counts().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn a_tripped_breaker_refuses_at_once_when_the_inner_service_is_not_ready() {
    let layer = base().consecutive_failures(1).build().unwrap();
    let h = layer.handle();
    let inner = Inner::new(true);
    let svc = layer.layer(inner.clone());
    outcome(&svc, req("fail")).await.unwrap();
    assert_eq!(h.state(), CircuitState::Open);
    inner.ready.store(false, Ordering::SeqCst); // e.g. every connection is busy
    let res = tokio::time::timeout(Duration::from_secs(1), svc.clone().oneshot(req("ok")))
        .await
        .expect("refused at once");
    let err = res.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(open.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn closed_breaker_still_waits_for_the_inner_service() {
    let layer = base().build().unwrap();
    let inner = Inner::new(false);
    let mut svc = layer.layer(inner.clone());
    assert!(poll_ready_now(&mut svc).is_pending());
    inner.ready.store(true, Ordering::SeqCst);
    assert!(matches!(poll_ready_now(&mut svc), Poll::Ready(Ok(()))));
    let res = svc.call(req("ok")).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_circuit_closing_between_poll_ready_and_call_never_calls_an_unready_inner() {
    let layer = base().build().unwrap();
    let h = layer.handle();
    let inner = Inner::new(false);
    let mut svc = layer.layer(inner.clone());
    h.force_open();
    // Ready without the inner service: the breaker vouches for a refusal.
    assert!(matches!(poll_ready_now(&mut svc), Poll::Ready(Ok(()))));
    assert_eq!(
        inner.polled.load(Ordering::SeqCst),
        0,
        "the inner service is not polled"
    );
    // An operator closes the circuit before the call: the inner service was never made ready, so the
    // call is refused rather than dispatched to it (which would panic here, as ConcurrencyLimit does).
    h.force_closed();
    let err = svc.call(req("ok")).await.unwrap_err();
    assert!(is_open(&err));
    assert_eq!(inner.calls(), 0);
    // The next round trip waits for the inner service again, and goes through once it is ready.
    assert!(poll_ready_now(&mut svc).is_pending());
    inner.ready.store(true, Ordering::SeqCst);
    assert_eq!(outcome(&svc, req("ok")).await.unwrap(), 200);
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_clone_does_not_inherit_the_refusal() {
    let layer = base().build().unwrap();
    let h = layer.handle();
    let inner = Inner::new(true);
    let mut svc = layer.layer(inner.clone());
    h.force_open();
    assert!(matches!(poll_ready_now(&mut svc), Poll::Ready(Ok(()))));
    h.force_closed();
    let mut clone = svc.clone();
    assert!(matches!(poll_ready_now(&mut clone), Poll::Ready(Ok(()))));
    assert_eq!(clone.call(req("ok")).await.unwrap().status(), 200);
}

// ---- item 5: cancelled calls that must count ----

#[tokio::test(start_paused = true)]
async fn a_call_cancelled_by_the_timeout_counts_as_a_failure() {
    let breaker = base()
        .consecutive_failures(1)
        .no_failure_rate()
        .build()
        .unwrap();
    let h = breaker.handle();
    let timeout = TimeoutLayer::new(Duration::from_secs(1)).unwrap();
    let svc = timeout.layer(breaker.layer(Inner::new(true)));
    let err = svc.clone().oneshot(req("hang")).await.unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some());
    assert_eq!(h.counts().consecutive_failures, 1);
    assert_eq!(
        h.state(),
        CircuitState::Open,
        "a hung call trips the breaker"
    );
    let err = svc.oneshot(req("ok")).await.unwrap_err();
    assert!(is_open(&err));
}

#[tokio::test(start_paused = true)]
async fn a_probe_cancelled_by_the_timeout_reopens() {
    let breaker = base()
        .consecutive_failures(1)
        .no_failure_rate()
        .build()
        .unwrap();
    let h = breaker.handle();
    let timeout = TimeoutLayer::new(Duration::from_secs(1)).unwrap();
    let svc = timeout.layer(breaker.layer(Inner::new(true)));
    assert!(svc.clone().oneshot(req("hang")).await.is_err());
    assert_eq!(h.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(svc.clone().oneshot(req("hang")).await.is_err()); // the probe hangs
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.counts().trips, 2);
    assert_eq!(h.counts().probes_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_deadline_shorter_than_the_local_timeout_is_not_a_failure() {
    let breaker = base()
        .consecutive_failures(1)
        .no_failure_rate()
        .build()
        .unwrap();
    let h = breaker.handle();
    let timeout = TimeoutLayer::builder()
        .timeout(Duration::from_secs(10))
        .grpc_timeout(true)
        .build()
        .unwrap();
    let svc = timeout.layer(breaker.layer(Inner::new(true)));
    let mut r = req("hang");
    r.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("10m"));
    assert!(svc.clone().oneshot(r).await.is_err());
    assert_eq!(h.counts().consecutive_failures, 0);
    assert_eq!(
        h.state(),
        CircuitState::Closed,
        "the caller gave up, not the server"
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_the_slow_threshold_counts_as_slow() {
    let breaker = base()
        .no_failure_rate()
        .slow_call_rate(Duration::from_secs(1), 0.5)
        .window_calls(4)
        .minimum_calls(2)
        .build()
        .unwrap();
    let h = breaker.handle();
    let svc = breaker.layer(Inner::new(true));
    for _ in 0..2 {
        // The caller goes away (a client disconnect) after 2 s, past the slow-call threshold.
        let r =
            tokio::time::timeout(Duration::from_secs(2), svc.clone().oneshot(req("hang"))).await;
        assert!(r.is_err());
    }
    assert_eq!(h.counts().window_slow, 2);
    assert_eq!(h.counts().window_failures, 0, "slow, not failed");
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_early_counts_for_nothing() {
    let breaker = base()
        .consecutive_failures(1)
        .slow_call_rate(Duration::from_secs(1), 0.5)
        .window_calls(4)
        .minimum_calls(1)
        .build()
        .unwrap();
    let h = breaker.handle();
    let svc = breaker.layer(Inner::new(true));
    let r =
        tokio::time::timeout(Duration::from_millis(500), svc.clone().oneshot(req("hang"))).await;
    assert!(r.is_err());
    assert_eq!(h.counts().window_calls, 0);
    assert_eq!(h.state(), CircuitState::Closed);
}

// ---- item 6: every size is bounded; durations do not truncate silently ----

#[test]
fn sizes_above_their_maximum_are_refused() {
    let field = |b: palisade_breaker::Builder| b.build().unwrap_err().setting().to_owned();
    assert_eq!(field(base().window_calls(10_001)), "window_calls");
    assert!(base().window_calls(10_000).build().is_ok());
    assert_eq!(
        field(base().window_time(Duration::from_millis(1500))),
        "window_time"
    );
    assert!(base().window_time(Duration::from_secs(2)).build().is_ok());
    let keyed = |b: palisade_breaker::Builder| {
        b.keyed(HeaderKey::from_static("x-tenant"))
            .unwrap_err()
            .setting()
            .to_owned()
    };
    assert_eq!(keyed(base().max_keys(1_000_001)), "max_keys");
    // Per-key windows multiply: 1 M keys of a 10,000-call window would be 10 GB.
    assert_eq!(
        keyed(base().max_keys(1_000_000).window_calls(10_000)),
        "max_keys"
    );
    assert!(base()
        .max_keys(100_000)
        .window_calls(100)
        .keyed(HeaderKey::from_static("x-tenant"))
        .is_ok());
}

#[test]
fn set_thresholds_shares_the_bounds() {
    let h = base()
        .window_calls(50)
        .minimum_calls(10)
        .build()
        .unwrap()
        .handle();
    let t = h.thresholds();
    let err = h
        .set_thresholds(Thresholds {
            minimum_calls: 51,
            ..t
        })
        .unwrap_err();
    assert_eq!(err.setting(), "minimum_calls");
    assert_eq!(h.thresholds(), t);
}

// ---- item 9: keyed lookups with what users pass ----

#[tokio::test(start_paused = true)]
async fn keyed_handle_finds_header_keys_by_str() {
    let layer = base().keyed(HeaderKey::from_static("x-tenant")).unwrap();
    let h = layer.handle();
    let svc = layer.layer(Inner::new(true));
    let mut r = req("fail");
    r.headers_mut()
        .insert("x-tenant", HeaderValue::from_static("acme"));
    let res = svc.clone().oneshot(r).await.unwrap();
    assert_eq!(res.status(), 500);
    assert!(h.get(&HeaderValue::from_static("acme")).is_some());
    assert!(h.get(&"acme").is_some(), "a &str finds a HeaderValue key");
    assert!(h.get("acme").is_some(), "so does a str");
    assert!(h.get(b"acme".as_slice()).is_some(), "and its bytes");
    assert!(h.get(&String::from("acme")).is_some(), "so does a String");
    assert_eq!(h.get(&"acme").unwrap().counts().window_failures, 1);
    assert!(h.get(&"globex").is_none());
}

#[tokio::test(start_paused = true)]
async fn keyed_handle_finds_ip_keys_by_any_ip_type() {
    use std::net::{IpAddr, Ipv4Addr};
    let layer = base()
        .keyed(palisade_core::key::key_fn(|_: &Request<()>| {
            Ok(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        }))
        .unwrap();
    let h = layer.handle();
    let svc = layer.layer(Inner::new(true));
    svc.oneshot(req("ok")).await.unwrap();
    let v4 = Ipv4Addr::new(10, 0, 0, 1);
    assert!(h.get(&IpAddr::V4(v4)).is_some());
    assert!(h.get(&v4).is_some(), "an Ipv4Addr finds an IpAddr key");
    assert!(
        h.get(&v4.to_ipv6_mapped()).is_some(),
        "so does its mapped form"
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_handle_finds_other_keys_by_their_own_type() {
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Tenant(u32);
    let layer = base()
        .keyed(palisade_core::key::key_fn(|_: &Request<()>| Ok(Tenant(7))))
        .unwrap();
    let h = layer.handle();
    let svc = layer.layer(Inner::new(true));
    svc.oneshot(req("ok")).await.unwrap();
    assert!(h.get(&Tenant(7)).is_some());
    assert!(h.get(&Tenant(8)).is_none());
}

/// A handler under a server timeout that calls a backend through a client stack of its own (total
/// timeout → breaker → backend): after `local` of its own work, then the backend answers in 100 ms.
async fn nested(
    client_timeout: Option<Duration>,
    local: Duration,
) -> palisade_breaker::BreakerHandle {
    let breaker = base()
        .consecutive_failures(1)
        .no_failure_rate()
        .build()
        .unwrap();
    let h = breaker.handle();
    let backend = tower::service_fn(|_req: Request<()>| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, BoxError>(Response::new(String::from("ok")))
    });
    let client = tower::util::BoxCloneSyncService::new(match client_timeout {
        Some(t) => {
            tower::util::Either::Left(TimeoutLayer::new(t).unwrap().layer(breaker.layer(backend)))
        }
        None => tower::util::Either::Right(breaker.layer(backend).map_err(Into::into)),
    });
    let handler = tower::service_fn(move |_req: Request<()>| {
        let client = client.clone();
        async move {
            tokio::time::sleep(local).await;
            client.oneshot(Request::new(())).await
        }
    });
    let server = TimeoutLayer::new(Duration::from_secs(1))
        .unwrap()
        .layer(handler);
    let err = server.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
    h
}

#[tokio::test(start_paused = true)]
async fn a_server_timeout_does_not_charge_a_client_breaker_under_its_own_timeout() {
    // The server's 1 s runs out while the backend call (10 ms old) is in flight: the backend is fine, the
    // handler was slow. The client stack has its own 5 s total timeout, which never fired.
    let h = nested(Some(Duration::from_secs(5)), Duration::from_millis(990)).await;
    assert_eq!(h.counts().consecutive_failures, 0, "{:?}", h.counts());
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_without_a_timeout_of_its_own_takes_the_nearest_one() {
    // Documented: with no timeout in its own stack, the breaker is charged by the nearest palisade
    // timeout above it — here the server's.
    let h = nested(None, Duration::from_millis(990)).await;
    assert_eq!(h.counts().consecutive_failures, 1, "{:?}", h.counts());
    assert_eq!(h.state(), CircuitState::Open);
}
