//! Circuit breaker behaviour, on paused time unless a test needs real threads.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_breaker::{CircuitBreakerLayer, CircuitOpen, CircuitState, Mode, Thresholds};
use palisade_core::audit::Audit;
use palisade_core::classify::HttpStatus;
use palisade_core::error::BoxError;
use palisade_core::health::{Health, HealthState};
use palisade_core::key::HeaderKey;
use tower::{Layer, Service, ServiceExt};

/// A body that yields its frames one by one (to send gRPC trailers).
#[derive(Debug)]
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

fn frames(status: u16) -> Response<Frames> {
    Response::builder()
        .status(status)
        .body(Frames(VecDeque::new()))
        .unwrap()
}

/// What the stand-in service does, by the `x-outcome` header: ok, fail (500), err, hang, slow (3 s),
/// grpc-fail (200 + trailers grpc-status 14), grpc-ok.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
}

impl Backend {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Backend {
    type Response = Response<Frames>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Frames>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let outcome = req
            .headers()
            .get("x-outcome")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "ok".into());
        Box::pin(async move {
            match outcome.as_str() {
                "ok" => Ok(frames(200)),
                "fail" => Ok(frames(500)),
                "client-error" => Ok(frames(404)),
                "err" => Err("connection reset".into()),
                "hang" => std::future::pending().await,
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    Ok(frames(200))
                }
                grpc => {
                    let code = if grpc == "grpc-fail" { "14" } else { "0" };
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", code.parse().unwrap());
                    let body = Frames(VecDeque::from([
                        Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
                        Frame::trailers(trailers),
                    ]));
                    Ok(Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap())
                }
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

fn tenant_req(tenant: &str, outcome: &str) -> Request<()> {
    Request::builder()
        .header("x-outcome", outcome)
        .header("x-tenant", tenant)
        .body(())
        .unwrap()
}

/// Calls once and drains the body (so end-of-stream verdicts are recorded). Err if refused or failed.
async fn call<S>(svc: &S, r: Request<()>) -> Result<u16, BoxError>
where
    S: Service<Request<()>, Error = BoxError> + Clone,
    S::Response:
        Into<Response<palisade_breaker::ResponseBody<Frames, palisade_core::classify::Grpc>>>,
{
    let res: Response<_> = svc.clone().oneshot(r).await?.into();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    Ok(status)
}

fn is_open_rejection(e: &BoxError) -> Option<Option<Duration>> {
    e.downcast_ref::<CircuitOpen>().map(|c| c.retry_after)
}

fn base() -> palisade_breaker::Builder {
    CircuitBreakerLayer::builder()
        .jitter(0.0)
        .open_wait(Duration::from_secs(2), Duration::from_secs(60))
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_a_probe_closes() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let backend = Backend::default();
    let svc = layer.layer(backend.clone());

    // Two failures, a success: the streak resets.
    call(&svc, req("fail")).await.unwrap();
    call(&svc, req("err")).await.unwrap_err();
    call(&svc, req("ok")).await.unwrap();
    assert_eq!(handle.counts().consecutive_failures, 0);
    for _ in 0..3 {
        assert_eq!(call(&svc, req("fail")).await.unwrap(), 500);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let calls = backend.calls();
    let err = call(&svc, req("ok")).await.unwrap_err();
    assert_eq!(is_open_rejection(&err), Some(Some(Duration::from_secs(2))));
    assert_eq!(
        backend.calls(),
        calls,
        "refused calls never reach the service"
    );
    assert_eq!(handle.counts().rejected, 1);

    tokio::time::advance(Duration::from_millis(1500)).await;
    let err = call(&svc, req("ok")).await.unwrap_err();
    assert_eq!(
        is_open_rejection(&err),
        Some(Some(Duration::from_millis(500)))
    );

    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(
        call(&svc, req("ok")).await.unwrap(),
        200,
        "the probe passes"
    );
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.counts().trips, 0);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window() {
    let layer = base()
        .failure_rate(0.5)
        .window_calls(10)
        .minimum_calls(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    // 4 failures in 9 calls, then under the minimum: no trip even at 100 % early on.
    for outcome in ["fail", "fail", "fail", "fail", "ok", "ok", "ok", "ok", "ok"] {
        call(&svc, req(outcome)).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    // A 404 is a client error: a success for the breaker. 4 of 10.
    call(&svc, req("client-error")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    let c = handle.counts();
    assert_eq!((c.window_calls, c.window_failures), (10, 4));
    // The window slides: the next failure replaces the oldest failure, still 4 of 10...
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    // ...and the next replaces a failure too; then one replacing a success reaches 5 of 10.
    call(&svc, req("fail")).await.unwrap();
    call(&svc, req("fail")).await.unwrap();
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "{:?}", handle.counts());
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_time_window_forgets_old_failures() {
    let layer = base()
        .failure_rate(0.5)
        .window_time(Duration::from_secs(10))
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("fail")).await.unwrap();
    call(&svc, req("fail")).await.unwrap();
    call(&svc, req("fail")).await.unwrap();
    // Eleven seconds later those failures are out of the window.
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..3 {
        call(&svc, req("ok")).await.unwrap();
    }
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed, "1 of 4 in the window");
    call(&svc, req("fail")).await.unwrap();
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "3 of 6 within 10 s");
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips() {
    let layer = base()
        .no_failure_rate()
        .slow_call_rate(Duration::from_secs(2), 0.5)
        .window_calls(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("ok")).await.unwrap();
    call(&svc, req("slow")).await.unwrap();
    call(&svc, req("ok")).await.unwrap();
    assert_eq!(handle.counts().window_slow, 1);
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&svc, req("slow")).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "2 of 4 calls took 3 s >= 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_failures_in_trailers_count() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    // HTTP 200 both times; the failure is only in the trailers.
    assert_eq!(call(&svc, req("grpc-fail")).await.unwrap(), 200);
    assert_eq!(handle.counts().consecutive_failures, 1);
    call(&svc, req("grpc-ok")).await.unwrap();
    assert_eq!(handle.counts().consecutive_failures, 0);
    call(&svc, req("grpc-fail")).await.unwrap();
    call(&svc, req("grpc-fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn wait_doubles_for_repeated_trips_and_jitter_stays_in_bounds() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("fail")).await.unwrap();
    for expected in [2u64, 4, 8, 16, 32, 60, 60] {
        assert_eq!(handle.retry_after(), Some(Duration::from_secs(expected)));
        tokio::time::advance(Duration::from_secs(expected)).await;
        // The probe fails: open again, with the next wait.
        call(&svc, req("fail")).await.unwrap();
    }

    let jittered = CircuitBreakerLayer::builder()
        .no_failure_rate()
        .consecutive_failures(1)
        .jitter(0.5)
        .seed(7)
        .build()
        .unwrap();
    let h = jittered.handle();
    let svc = jittered.layer(Backend::default());
    call(&svc, req("fail")).await.unwrap();
    let wait = h.retry_after().unwrap();
    assert!(
        wait >= Duration::from_secs(2) && wait <= Duration::from_secs(3),
        "{wait:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_its_probes_and_reopens_on_failure() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(1)
        .half_open_probes(2)
        .successes_to_close(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let backend = Backend::default();
    let svc = layer.layer(backend.clone());
    call(&svc, req("fail")).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;

    // Two probes hang; everything else in the herd is refused at once.
    let before = backend.calls();
    let mut probes = Vec::new();
    for _ in 0..2 {
        let mut fut = Box::pin(svc.clone().oneshot(req("hang")));
        assert!(
            futures_poll(&mut fut).is_none(),
            "a probe reaches the hanging service"
        );
        probes.push(fut);
    }
    for _ in 0..1000 {
        let err = svc.clone().oneshot(req("ok")).await.unwrap_err();
        assert_eq!(is_open_rejection(&err), Some(None));
    }
    assert_eq!(backend.calls() - before, 2);
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_eq!(handle.counts().probes_in_flight, 2);

    // Dropping a probe gives its slot back: the next call is a probe, and it fails: Open again, 4 s.
    drop(probes.pop());
    assert_eq!(handle.counts().probes_in_flight, 1);
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(4)));
    // The remaining probe is stale now: dropping it changes nothing.
    drop(probes);
    assert_eq!(handle.state(), CircuitState::Open);
}

/// Polls a future once with a no-op waker.
fn futures_poll<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(fut).poll(&mut cx) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[tokio::test(start_paused = true)]
async fn half_open_with_stuck_probes_opens_again_after_max_wait() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(1)
        .half_open_max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("fail")).await.unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut stuck = Box::pin(svc.clone().oneshot(req("hang")));
    assert!(futures_poll(&mut stuck).is_none());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(call(&svc, req("ok")).await.is_err());
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = call(&svc, req("ok")).await.unwrap_err();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "HalfOpen gave up on its probe"
    );
    assert_eq!(is_open_rejection(&err), Some(Some(Duration::from_secs(4))));
    // After the next wait a fresh probe is admitted even though the stuck one never finished.
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(call(&svc, req("ok")).await.unwrap(), 200);
    assert_eq!(handle.state(), CircuitState::Closed);
    drop(stuck);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_for_nothing() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("fail")).await.unwrap();
    // A call dropped before its response (cancelled) is ignored: the streak holds at 1.
    let mut cancelled = Box::pin(svc.clone().oneshot(req("hang")));
    assert!(futures_poll(&mut cancelled).is_none());
    drop(cancelled);
    // A response whose body is dropped before the gRPC trailers arrive is ignored too.
    let res = svc.clone().oneshot(req("grpc-fail")).await.unwrap();
    drop(res);
    assert_eq!(handle.counts().consecutive_failures, 1);
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn forced_states_and_modes() {
    let health = Health::new();
    let (audit, log) = Audit::memory(100);
    let layer = base()
        .name("payments")
        .no_failure_rate()
        .consecutive_failures(1)
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let backend = Backend::default();
    let svc = layer.layer(backend.clone());

    handle.force_open();
    assert_eq!(
        (handle.state(), handle.mode()),
        (CircuitState::Open, Mode::ForcedOpen)
    );
    let err = call(&svc, req("ok")).await.unwrap_err();
    assert_eq!(
        is_open_rejection(&err),
        Some(None),
        "forced open has no retry time"
    );
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(
        call(&svc, req("ok")).await.is_err(),
        "forced open does not time out"
    );
    assert_eq!(
        health
            .readiness()
            .component("breaker.payments")
            .unwrap()
            .state(),
        HealthState::Degraded
    );

    handle.force_closed();
    assert_eq!(
        (handle.state(), handle.mode()),
        (CircuitState::Closed, Mode::Normal)
    );
    assert_eq!(health.readiness().status(), HealthState::Healthy);

    handle.disable();
    for _ in 0..5 {
        assert_eq!(call(&svc, req("fail")).await.unwrap(), 500);
    }
    assert_eq!(
        handle.state(),
        CircuitState::Closed,
        "disabled: no transitions"
    );
    assert_eq!(
        handle.counts().consecutive_failures,
        5,
        "disabled: still counting"
    );

    handle.metrics_only();
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "metrics-only transitions..."
    );
    let calls = backend.calls();
    assert_eq!(
        call(&svc, req("ok")).await.unwrap(),
        200,
        "...but never refuses"
    );
    assert_eq!(backend.calls(), calls + 1);

    handle.reset();
    assert_eq!(
        (handle.state(), handle.mode()),
        (CircuitState::Closed, Mode::Normal)
    );
    assert_eq!(handle.counts().rejected, 0);

    audit.flush().await.unwrap();
    let kinds: Vec<String> = log.records().iter().map(|r| r.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            "breaker.forced_open",
            "breaker.closed",
            "breaker.disabled",
            "breaker.metrics_only",
            "breaker.opened",
            "breaker.reset"
        ]
    );
    let opened = &log.records()[4];
    assert_eq!(opened.details["breaker"], "payments");
    // Switching modes starts counting afresh: one failure in metrics-only mode trips.
    assert_eq!(opened.details["consecutive_failures"], 1);
    assert_eq!(opened.details["wait_ms"], 2000);
    assert_eq!(opened.details["reason"], "1 failure");
    assert_eq!(opened.details["mode"], "metrics_only");
    audit.verify(&log.records(), audit.head().as_ref()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn transitions_are_audited_with_their_numbers_and_reported_to_health() {
    let health = Health::new();
    let (audit, log) = Audit::memory(100);
    let layer = base()
        .name("search")
        .failure_rate(0.5)
        .window_calls(4)
        .minimum_calls(4)
        .health(&health)
        .audit(&audit)
        .build()
        .unwrap();
    let svc = layer.layer(Backend::default());
    for o in ["ok", "fail", "ok", "fail"] {
        call(&svc, req(o)).await.unwrap();
    }
    let report = health.readiness();
    let c = report.component("breaker.search").unwrap();
    assert_eq!(c.state(), HealthState::Degraded);
    assert!(
        c.reason().unwrap().contains("failure rate 50.0% (2 of 4)"),
        "{:?}",
        c.reason()
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    call(&svc, req("ok")).await.unwrap();
    assert_eq!(health.readiness().status(), HealthState::Healthy);

    audit.flush().await.unwrap();
    let records = log.records();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["breaker.opened", "breaker.half_open", "breaker.closed"]
    );
    assert_eq!(records[0].details["failure_rate"], 0.5);
    assert_eq!(records[0].details["calls"], 4);
    assert_eq!(records[0].details["failures"], 2);
    assert_eq!(records[2].details["probe_successes"], 1);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_tenants() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(2)
        .keyed(HeaderKey::from_static("x-tenant"))
        .unwrap();
    let handle = layer.handle();
    let backend = Backend::default();
    let svc = layer.layer(backend.clone());
    for _ in 0..2 {
        call(&svc, tenant_req("acme", "fail")).await.unwrap();
    }
    assert!(
        call(&svc, tenant_req("acme", "ok")).await.is_err(),
        "acme's circuit is open"
    );
    assert_eq!(
        call(&svc, tenant_req("globex", "ok")).await.unwrap(),
        200,
        "globex is unaffected"
    );
    assert_eq!(
        call(&svc, req("ok")).await.unwrap(),
        200,
        "no key: the default circuit"
    );
    let acme = handle.get(&http::HeaderValue::from_static("acme")).unwrap();
    assert_eq!(acme.state(), CircuitState::Open);
    let globex = handle
        .get(&http::HeaderValue::from_static("globex"))
        .unwrap();
    assert_eq!(globex.state(), CircuitState::Closed);
    assert_eq!(handle.len(), 2);
    assert_eq!(handle.open_circuits(), 1);
    // A handle steers one key only.
    acme.force_closed();
    assert_eq!(call(&svc, tenant_req("acme", "ok")).await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn keyed_map_is_bounded_and_evicts_idle_keys() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(1)
        .max_keys(10)
        .idle_timeout(Duration::from_secs(60))
        .keyed(HeaderKey::from_static("x-tenant"))
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    // One tenant's circuit is open: it must survive eviction.
    call(&svc, tenant_req("bad", "fail")).await.unwrap();
    for i in 0..1000 {
        call(&svc, tenant_req(&format!("t{i}"), "ok"))
            .await
            .unwrap();
    }
    assert_eq!(handle.len(), 10, "never more than max_keys");
    assert_eq!(handle.overflowed(), 1000 - 9);
    // An hour later the idle closed circuits go; the open one stays.
    tokio::time::advance(Duration::from_secs(3600)).await;
    call(&svc, tenant_req("newcomer", "ok")).await.unwrap();
    assert_eq!(handle.len(), 2, "the open circuit and the newcomer");
    assert!(handle
        .get(&http::HeaderValue::from_static("newcomer"))
        .is_some());
    assert!(handle.get(&http::HeaderValue::from_static("bad")).is_some());
}

#[test]
fn bad_config_is_a_clear_error() {
    let err = CircuitBreakerLayer::builder()
        .failure_rate(1.5)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "failure_rate");
    assert_eq!(
        err.to_string(),
        "invalid circuit breaker setting `failure_rate`: 1.5 is not in (0, 1]"
    );
    let err = CircuitBreakerLayer::builder()
        .no_failure_rate()
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no trip strategy"), "{err}");
    let err = CircuitBreakerLayer::builder()
        .open_wait(Duration::from_secs(10), Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "open_wait");
    assert_eq!(
        CircuitBreakerLayer::builder()
            .half_open_probes(0)
            .build()
            .unwrap_err()
            .setting(),
        "half_open_probes"
    );
    assert_eq!(
        CircuitBreakerLayer::builder()
            .window_calls(0)
            .build()
            .unwrap_err()
            .setting(),
        "window_calls"
    );
    assert_eq!(
        CircuitBreakerLayer::builder()
            .window_time(Duration::from_millis(10))
            .build()
            .unwrap_err()
            .setting(),
        "window_time"
    );
    assert_eq!(
        CircuitBreakerLayer::builder()
            .jitter(-1.0)
            .build()
            .unwrap_err()
            .setting(),
        "jitter"
    );
    assert_eq!(
        CircuitBreakerLayer::builder()
            .max_keys(0)
            .keyed(HeaderKey::from_static("x-t"))
            .map(|_| ())
            .unwrap_err()
            .setting(),
        "max_keys"
    );
}

#[test]
fn custom_classifier() {
    // Only 503 counts; a 500 is a success for this breaker.
    let layer = CircuitBreakerLayer::builder()
        .classify(HttpStatus::new(
            palisade_core::classify::StatusSet::empty().with(http::StatusCode::SERVICE_UNAVAILABLE),
        ))
        .no_failure_rate()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|r: Request<u16>| async move {
        Ok::<_, BoxError>(
            Response::builder()
                .status(*r.body())
                .body(String::new())
                .unwrap(),
        )
    }));
    rt.block_on(svc.clone().oneshot(Request::new(500))).unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    rt.block_on(svc.oneshot(Request::new(503))).unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

/// A real herd: many threads call at the moment the circuit becomes half-open. No sleeps: the open wait
/// is 1 ns, so it has passed by the time the herd arrives.
#[test]
fn concurrent_herd_at_half_open_admits_at_most_the_probes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = CircuitBreakerLayer::builder()
            .no_failure_rate()
            .consecutive_failures(1)
            .half_open_probes(3)
            .open_wait(Duration::from_nanos(1), Duration::from_nanos(1))
            .jitter(0.0)
            .build()
            .unwrap();
        let handle = layer.handle();
        let backend = Backend::default();
        let svc = layer.layer(backend.clone());
        call(&svc, req("fail")).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Open);
        let before = backend.calls();
        // Every call is polled once: a refusal resolves at once, an admitted probe stays pending (the
        // service hangs) and is held until the whole herd has run, so no slot is given back meanwhile.
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (svc, held) = (svc.clone(), held.clone());
            tasks.push(tokio::spawn(async move {
                let mut fut = Box::pin(svc.oneshot(req("hang")));
                match futures_poll(&mut fut) {
                    Some(Err(e)) => assert!(is_open_rejection(&e).is_some(), "{e}"),
                    Some(Ok(_)) => panic!("a hanging call cannot succeed"),
                    None => held.lock().unwrap().push(fut),
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let admitted = held.lock().unwrap().len();
        assert_eq!(admitted, 3, "exactly the configured probes are admitted");
        assert_eq!(
            backend.calls() - before,
            3,
            "and only they reach the service"
        );
        assert_eq!(handle.counts().probes_in_flight, 3);
        held.lock().unwrap().clear();
        assert_eq!(
            handle.counts().probes_in_flight,
            0,
            "dropped probes give their slots back"
        );
        assert_eq!(handle.state(), CircuitState::HalfOpen);
    });
}

// ---- Thresholds changed at run time (`set_thresholds`) ----

const FIVE_IN_A_ROW: Thresholds = Thresholds {
    consecutive_failures: 5,
    failure_rate: None,
    slow_call_rate: None,
    minimum_calls: 20,
};

#[test]
fn thresholds_round_trip() {
    let layer = base()
        .consecutive_failures(7)
        .failure_rate(0.25)
        .slow_call_rate(Duration::from_micros(1500), 0.8)
        .minimum_calls(9)
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(
        handle.thresholds(),
        Thresholds {
            consecutive_failures: 7,
            failure_rate: Some(0.25),
            slow_call_rate: Some((Duration::from_micros(1500), 0.8)),
            minimum_calls: 9,
        },
        "the builder's values"
    );
    for t in [
        FIVE_IN_A_ROW,
        Thresholds {
            consecutive_failures: 0,
            failure_rate: None,
            slow_call_rate: Some((Duration::from_nanos(1), 1.0)),
            minimum_calls: 1,
        },
        Thresholds {
            consecutive_failures: u32::MAX,
            failure_rate: Some(f64::MIN_POSITIVE),
            slow_call_rate: None,
            minimum_calls: 100,
        },
    ] {
        handle.set_thresholds(t).unwrap();
        assert_eq!(handle.thresholds(), t);
    }
    let defaults = CircuitBreakerLayer::builder().build().unwrap().handle();
    assert_eq!(
        defaults.thresholds(),
        Thresholds {
            consecutive_failures: 0,
            failure_rate: Some(0.5),
            slow_call_rate: None,
            minimum_calls: 20,
        }
    );
}

#[tokio::test(start_paused = true)]
async fn lowering_consecutive_failures_trips_on_the_next_failure() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    for _ in 0..3 {
        call(&svc, req("fail")).await.unwrap();
    }
    handle
        .set_thresholds(Thresholds {
            consecutive_failures: 2,
            ..handle.thresholds()
        })
        .unwrap();
    // The change judges nothing by itself, and keeps the count.
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.counts().consecutive_failures, 3);
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "4 >= 2: the next failure trips"
    );
    assert!(call(&svc, req("ok")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn raising_consecutive_failures_keeps_a_circuit_closed_that_would_have_opened() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    for _ in 0..2 {
        call(&svc, req("fail")).await.unwrap();
    }
    handle
        .set_thresholds(Thresholds {
            consecutive_failures: 5,
            ..handle.thresholds()
        })
        .unwrap();
    for n in 3..5 {
        call(&svc, req("fail")).await.unwrap();
        assert_eq!(handle.state(), CircuitState::Closed, "{n} failures < 5");
    }
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_new_failure_rate_judges_the_window_as_it_stands() {
    let (audit, log) = Audit::memory(100);
    let layer = base()
        .failure_rate(0.75)
        .window_calls(4)
        .minimum_calls(4)
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    for o in ["fail", "fail", "ok", "ok"] {
        call(&svc, req(o)).await.unwrap();
    }
    handle
        .set_thresholds(Thresholds {
            failure_rate: Some(0.5),
            ..handle.thresholds()
        })
        .unwrap();
    let counts = handle.counts();
    assert_eq!(
        (counts.window_calls, counts.window_failures),
        (4, 2),
        "window kept"
    );
    // F S S F: 2 of 4, under the old 75 %, at the new 50 %.
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);

    audit.flush().await.unwrap();
    let records = log.records();
    let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["breaker.reconfigured", "breaker.opened"]);
    assert_eq!(records[1].details["failure_rate_threshold"], 0.5);
    assert!(
        records[1].details["reason"]
            .as_str()
            .unwrap()
            .ends_with("threshold 50.0%"),
        "{:?}",
        records[1].details["reason"]
    );
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_can_be_turned_on_at_run_time() {
    let layer = base()
        .failure_rate(0.5)
        .window_calls(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("slow")).await.unwrap();
    assert_eq!(handle.counts().window_slow, 0, "not tracked yet");
    handle
        .set_thresholds(Thresholds {
            slow_call_rate: Some((Duration::from_secs(2), 0.5)),
            ..handle.thresholds()
        })
        .unwrap();
    call(&svc, req("ok")).await.unwrap();
    call(&svc, req("slow")).await.unwrap();
    assert_eq!(handle.counts().window_slow, 1);
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&svc, req("slow")).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open, "2 slow calls of 4");
}

#[tokio::test(start_paused = true)]
async fn invalid_thresholds_are_refused_and_change_nothing() {
    let (audit, log) = Audit::memory(100);
    let layer = base()
        .failure_rate(0.5)
        .window_calls(10)
        .minimum_calls(5)
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, req("fail")).await.unwrap();
    let before = handle.thresholds();
    let counts = handle.counts();
    let cases = [
        (
            "failure_rate",
            Thresholds {
                failure_rate: Some(0.0),
                ..before
            },
        ),
        (
            "failure_rate",
            Thresholds {
                failure_rate: Some(1.5),
                ..before
            },
        ),
        (
            "failure_rate",
            Thresholds {
                failure_rate: Some(f64::NAN),
                ..before
            },
        ),
        (
            "slow_call_rate",
            Thresholds {
                slow_call_rate: Some((Duration::ZERO, 0.5)),
                ..before
            },
        ),
        (
            "slow_call_rate",
            Thresholds {
                slow_call_rate: Some((Duration::from_secs(1), -0.1)),
                ..before
            },
        ),
        (
            "consecutive_failures",
            Thresholds {
                consecutive_failures: 0,
                failure_rate: None,
                slow_call_rate: None,
                minimum_calls: 5,
            },
        ),
        (
            "minimum_calls",
            Thresholds {
                minimum_calls: 0,
                ..before
            },
        ),
        (
            "minimum_calls",
            Thresholds {
                minimum_calls: 11,
                ..before
            },
        ),
    ];
    for (setting, t) in cases {
        let err = handle.set_thresholds(t).unwrap_err();
        assert_eq!(err.setting(), setting, "{t:?}: {err}");
        assert_eq!(err.layer(), "circuit breaker");
        assert_eq!(handle.thresholds(), before, "{t:?} changed nothing");
    }
    assert_eq!(handle.counts(), counts);
    assert_eq!(handle.state(), CircuitState::Closed);
    // Each refusal is also what the builder says about the same values.
    let err = base().failure_rate(1.5).build().unwrap_err();
    assert_eq!(err.setting(), "failure_rate");
    let err = base().minimum_calls(0).build().unwrap_err();
    assert_eq!(err.setting(), "minimum_calls");
    let err = base()
        .window_calls(10)
        .minimum_calls(11)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "minimum_calls");
    // A rate needs a window: a breaker built without one cannot turn a rate on.
    let no_window = base()
        .no_failure_rate()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let h = no_window.handle();
    let err = h
        .set_thresholds(Thresholds {
            failure_rate: Some(0.5),
            ..h.thresholds()
        })
        .unwrap_err();
    assert_eq!(err.setting(), "failure_rate");
    assert!(err.problem().contains("no window"), "{err}");
    assert_eq!(h.thresholds().failure_rate, None);
    // With a window asked for at build time, it can.
    let windowed = base()
        .no_failure_rate()
        .consecutive_failures(3)
        .window_calls(50)
        .build()
        .unwrap();
    let h = windowed.handle();
    h.set_thresholds(Thresholds {
        failure_rate: Some(0.5),
        ..h.thresholds()
    })
    .unwrap();

    audit.flush().await.unwrap();
    assert!(
        log.records().is_empty(),
        "refusals are not reconfigurations"
    );
}

#[tokio::test(start_paused = true)]
async fn reconfiguration_is_audited_with_old_and_new_values() {
    let (audit, log) = Audit::memory(100);
    let layer = base()
        .name("payments")
        .failure_rate(0.5)
        .minimum_calls(10)
        .audit(&audit)
        .build()
        .unwrap();
    let handle = layer.handle();
    let new = Thresholds {
        consecutive_failures: 4,
        failure_rate: None,
        slow_call_rate: Some((Duration::from_millis(250), 0.3)),
        minimum_calls: 8,
    };
    handle.set_thresholds(new).unwrap();
    handle.set_thresholds(new).unwrap(); // unchanged: no event
    audit.flush().await.unwrap();
    let records = log.records();
    assert_eq!(records.len(), 1);
    let d = &records[0].details;
    assert_eq!(records[0].kind, "breaker.reconfigured");
    assert_eq!(d["breaker"], "payments");
    assert_eq!(d["old_consecutive_failures"], 0);
    assert_eq!(d["old_failure_rate"], 0.5);
    assert!(d["old_slow_call_rate"].is_null());
    assert!(d["old_slow_call_threshold_ms"].is_null());
    assert_eq!(d["old_minimum_calls"], 10);
    assert_eq!(d["new_consecutive_failures"], 4);
    assert!(d["new_failure_rate"].is_null());
    assert_eq!(d["new_slow_call_rate"], 0.3);
    assert_eq!(d["new_slow_call_threshold_ms"], 250.0);
    assert_eq!(d["new_minimum_calls"], 8);
    audit.verify(&records, audit.head().as_ref()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn keyed_set_thresholds_applies_to_present_and_future_circuits() {
    let layer = base()
        .no_failure_rate()
        .consecutive_failures(2)
        .keyed(HeaderKey::from_static("x-tenant"))
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Backend::default());
    call(&svc, tenant_req("acme", "fail")).await.unwrap();
    handle
        .set_thresholds(Thresholds {
            consecutive_failures: 4,
            ..handle.thresholds()
        })
        .unwrap();
    let acme = handle.get(&http::HeaderValue::from_static("acme")).unwrap();
    assert_eq!(acme.thresholds().consecutive_failures, 4);
    // Present: acme had 1 failure; 2 more would have opened it before.
    for _ in 0..2 {
        call(&svc, tenant_req("acme", "fail")).await.unwrap();
    }
    assert_eq!(acme.state(), CircuitState::Closed);
    call(&svc, tenant_req("acme", "fail")).await.unwrap();
    assert_eq!(acme.state(), CircuitState::Open);
    // Future: a key first seen now trips at 4 too, and so does the default circuit.
    for _ in 0..3 {
        call(&svc, tenant_req("beta", "fail")).await.unwrap();
        call(&svc, req("fail")).await.unwrap();
    }
    let beta = handle.get(&http::HeaderValue::from_static("beta")).unwrap();
    assert_eq!(beta.state(), CircuitState::Closed);
    assert_eq!(handle.default_circuit().state(), CircuitState::Closed);
    call(&svc, tenant_req("beta", "fail")).await.unwrap();
    call(&svc, req("fail")).await.unwrap();
    assert_eq!(beta.state(), CircuitState::Open);
    assert_eq!(handle.default_circuit().state(), CircuitState::Open);
    // Invalid values are refused for all of them.
    assert!(handle
        .set_thresholds(Thresholds {
            consecutive_failures: 0,
            ..handle.thresholds()
        })
        .is_err());
    assert_eq!(beta.thresholds().consecutive_failures, 4);
}

/// Calls on four worker threads while another thread keeps changing the thresholds: nothing panics,
/// every read sees one of the values set (never a mix of two), and the last value set is the one left.
#[test]
fn concurrent_set_thresholds_while_calls_run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let values = [
            Thresholds {
                consecutive_failures: 3,
                failure_rate: Some(0.5),
                slow_call_rate: None,
                minimum_calls: 10,
            },
            Thresholds {
                consecutive_failures: 0,
                failure_rate: Some(0.9),
                slow_call_rate: Some((Duration::from_secs(5), 0.6)),
                minimum_calls: 50,
            },
            Thresholds {
                consecutive_failures: 1_000,
                failure_rate: None,
                slow_call_rate: Some((Duration::from_millis(1), 1.0)),
                minimum_calls: 1,
            },
        ];
        let layer = CircuitBreakerLayer::builder()
            .failure_rate(0.5)
            .window_calls(100)
            .minimum_calls(10)
            .open_wait(Duration::from_micros(1), Duration::from_micros(1))
            .jitter(0.0)
            .build()
            .unwrap();
        let handle = layer.handle();
        handle.set_thresholds(values[2]).unwrap();
        let svc = layer.layer(Backend::default());
        let mut tasks = Vec::new();
        for worker in 0..4 {
            let (svc, handle) = (svc.clone(), handle.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..2_000 {
                    let o = if (i + worker) % 3 == 0 { "fail" } else { "ok" };
                    // Refusals (the circuit opens and closes as the thresholds move) are expected.
                    let _ = call(&svc, req(o)).await;
                    if i % 50 == 0 {
                        let t = handle.thresholds();
                        assert!(values.contains(&t), "a torn read: {t:?}");
                    }
                }
            }));
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // A reader that does nothing else, to catch a read overlapping a write.
        let reader = {
            let (handle, done) = (handle.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let t = handle.thresholds();
                    assert!(values.contains(&t), "a torn read: {t:?}");
                }
            })
        };
        let setter = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                for i in 0..20_000 {
                    handle.set_thresholds(values[i % 3]).unwrap();
                }
                values[(20_000 - 1) % 3]
            })
        };
        for t in tasks {
            t.await.unwrap();
        }
        let last = tokio::task::spawn_blocking(move || {
            let last = setter.join().unwrap();
            done.store(true, Ordering::Relaxed);
            reader.join().unwrap();
            last
        })
        .await
        .unwrap();
        assert_eq!(handle.thresholds(), last);
    });
}
