//! Behaviour of the timeout layer on paused tokio time: the fast path, the deadline, overrides, deadline
//! headers in and out, cancellation and configuration errors.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use palisade_core::error::{BoxError, Elapsed};
use palisade_core::grpc::GrpcCode;
use palisade_core::Rejection;
use palisade_timeout::{BuildError, Deadline, TimeoutLayer, TimeoutOverride};
use tokio::time::{advance, sleep, Instant};
use tower::{service_fn, Layer, Service, ServiceExt};

const DEFAULT: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

type Res = Response<()>;

fn layer() -> TimeoutLayer {
    TimeoutLayer::new(DEFAULT).unwrap()
}

/// Answers after `delay` (never, if `None`).
fn slow(
    delay: Option<Duration>,
) -> impl Service<
    Request<()>,
    Response = Res,
    Error = BoxError,
    Future = impl Future<Output = Result<Res, BoxError>> + Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |_req: Request<()>| async move {
        match delay {
            Some(d) => sleep(d).await,
            None => std::future::pending().await,
        }
        Ok::<_, BoxError>(Response::new(()))
    })
}

/// A service that never answers and counts its calls.
fn counting_pending(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Res, Error = BoxError> + Clone {
    service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<Res, BoxError>>()
    })
}

/// A service that records the `grpc-timeout` it receives and answers at once.
fn recording(
    seen: Arc<Mutex<Option<HeaderValue>>>,
) -> impl Service<Request<()>, Response = Res, Error = BoxError> + Clone {
    service_fn(move |req: Request<()>| {
        *seen.lock().unwrap() = req.headers().get("grpc-timeout").cloned();
        std::future::ready(Ok::<_, BoxError>(Response::new(())))
    })
}

/// Polls `fut` once with a no-op waker.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn assert_elapsed(err: &BoxError, after: Duration) {
    assert_eq!(
        err.downcast_ref::<Elapsed>(),
        Some(&Elapsed::new(after)),
        "{err}"
    );
}

/// Calls `svc` with `req` and returns how long the call took on the paused clock, and its result.
async fn timed<S>(svc: S, req: Request<()>) -> (Duration, Result<Res, BoxError>)
where
    S: Service<Request<()>, Response = Res, Error = BoxError>,
{
    let start = Instant::now();
    let out = svc.oneshot(req).await;
    (start.elapsed(), out)
}

fn req_with_header(name: &str, value: &str) -> Request<()> {
    Request::builder().header(name, value).body(()).unwrap()
}

// ---- the fast path ----

#[test]
fn ready_at_first_poll_needs_no_timer_and_no_runtime() {
    // No tokio runtime exists here: arming a timer would panic, so a response proves none was armed.
    let mut svc = TimeoutLayer::builder()
        .timeout(DEFAULT)
        .grpc_timeout(true)
        .header("x-request-timeout")
        .build()
        .unwrap()
        .layer(service_fn(|_req: Request<()>| async {
            Ok::<_, BoxError>(Response::new(()))
        }));
    for _ in 0..3 {
        assert!(poll_once(pin!(svc.ready())).is_ready());
        let fut = pin!(svc.call(req_with_header("grpc-timeout", "5m")));
        match poll_once(fut) {
            Poll::Ready(Ok(_)) => {}
            _ => panic!("a ready inner future is ready at first poll"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ready_at_first_poll_does_not_move_paused_time() {
    let start = Instant::now();
    let svc = layer().layer(slow(Some(Duration::ZERO)));
    let res = svc.oneshot(Request::new(())).await;
    assert!(res.is_ok());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

// ---- the deadline ----

#[tokio::test(start_paused = true)]
async fn pending_call_times_out_exactly_at_the_deadline() {
    let mut svc = layer().layer(slow(None));
    svc.ready().await.unwrap();
    let mut fut = pin!(svc.call(Request::new(())));
    assert!(poll_once(fut.as_mut()).is_pending()); // arms the timer

    advance(DEFAULT - MS).await;
    assert!(
        poll_once(fut.as_mut()).is_pending(),
        "1 ms before the deadline"
    );

    advance(MS).await;
    match poll_once(fut.as_mut()) {
        Poll::Ready(Err(err)) => assert_elapsed(&err, DEFAULT),
        other => panic!("expected Elapsed at the deadline, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn response_just_before_the_deadline_succeeds() {
    let (took, res) = timed(layer().layer(slow(Some(DEFAULT - MS))), Request::new(())).await;
    assert!(res.is_ok());
    assert_eq!(took, DEFAULT - MS);
}

#[tokio::test(start_paused = true)]
async fn response_at_the_deadline_wins_over_the_timeout() {
    let (took, res) = timed(layer().layer(slow(Some(DEFAULT))), Request::new(())).await;
    assert!(res.is_ok(), "the inner future is polled first");
    assert_eq!(took, DEFAULT);
}

#[tokio::test(start_paused = true)]
async fn response_after_the_deadline_is_elapsed() {
    let (took, res) = timed(layer().layer(slow(Some(DEFAULT + MS))), Request::new(())).await;
    assert_elapsed(&res.unwrap_err(), DEFAULT);
    assert_eq!(took, DEFAULT);
}

#[tokio::test(start_paused = true)]
async fn elapsed_is_rescued_as_504_and_deadline_exceeded() {
    let err = layer()
        .layer(slow(None))
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    let rejection = Rejection::find(&*err).expect("a palisade rejection");
    assert!(matches!(rejection, Rejection::Elapsed(e) if e.after == DEFAULT));
    assert_eq!(rejection.http_status(), 504);
    assert_eq!(rejection.grpc_code(), GrpcCode::DeadlineExceeded);
    assert_eq!(rejection.retry_after(), None);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let svc = layer().layer(service_fn(|_req: Request<()>| async {
        Err::<Res, _>(std::io::Error::other("backend down"))
    }));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    assert!(err.downcast_ref::<std::io::Error>().is_some());
    assert!(Rejection::find(&*err).is_none());
}

#[test]
fn poll_ready_delegates_to_the_inner_service() {
    let state = Arc::new(AtomicU8::new(NOT_READY));
    let mut svc = layer().layer(Gate(state.clone()));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
    state.store(READY, Ordering::SeqCst);
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    state.store(BROKEN, Ordering::SeqCst);
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "broken"),
        other => panic!("expected the inner readiness error, got {other:?}"),
    }
}

const NOT_READY: u8 = 0;
const READY: u8 = 1;
const BROKEN: u8 = 2;

/// A service whose readiness is switched from outside.
#[derive(Clone)]
struct Gate(Arc<AtomicU8>);

impl Service<Request<()>> for Gate {
    type Response = Res;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.0.load(Ordering::SeqCst) {
            NOT_READY => Poll::Pending,
            READY => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err("broken".into())),
        }
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

// ---- per-request overrides ----

#[tokio::test(start_paused = true)]
async fn extension_override_shorter_and_longer_than_the_default() {
    for budget in [Duration::from_millis(100), Duration::from_secs(30)] {
        let mut req = Request::new(());
        req.extensions_mut().insert(TimeoutOverride(budget));
        let (took, res) = timed(layer().layer(slow(None)), req).await;
        assert_elapsed(&res.unwrap_err(), budget);
        assert_eq!(took, budget);
    }
    // Longer than the default: a 5 s call succeeds under a 10 s override.
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(TimeoutOverride(Duration::from_secs(10)));
    let (_, res) = timed(layer().layer(slow(Some(Duration::from_secs(5)))), req).await;
    assert!(res.is_ok());
}

#[tokio::test(start_paused = true)]
async fn closure_override_shorter_and_longer_than_the_default() {
    let layer = TimeoutLayer::builder()
        .timeout(DEFAULT)
        .override_with(|req: &Request<()>| match req.uri().path() {
            "/fast" => Some(Duration::from_millis(50)),
            "/export" => Some(Duration::from_secs(60)),
            _ => None,
        })
        .build()
        .unwrap();
    let to = |path: &str| Request::builder().uri(path).body(()).unwrap();

    let (took, res) = timed(layer.layer(slow(None)), to("/fast")).await;
    assert_elapsed(&res.unwrap_err(), Duration::from_millis(50));
    assert_eq!(took, Duration::from_millis(50));

    let (took, res) = timed(layer.layer(slow(None)), to("/export")).await;
    assert_elapsed(&res.unwrap_err(), Duration::from_secs(60));
    assert_eq!(took, Duration::from_secs(60));

    let (took, res) = timed(layer.layer(slow(None)), to("/other")).await;
    assert_elapsed(&res.unwrap_err(), DEFAULT);
    assert_eq!(took, DEFAULT);

    let (_, res) = timed(
        layer.layer(slow(Some(Duration::from_secs(30)))),
        to("/export"),
    )
    .await;
    assert!(res.is_ok());
}

#[tokio::test(start_paused = true)]
async fn extension_wins_over_the_closure() {
    let layer = TimeoutLayer::builder()
        .timeout(DEFAULT)
        .override_with(|_: &Request<()>| Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(TimeoutOverride(Duration::from_millis(20)));
    let (took, res) = timed(layer.layer(slow(None)), req).await;
    assert_elapsed(&res.unwrap_err(), Duration::from_millis(20));
    assert_eq!(took, Duration::from_millis(20));
}

#[tokio::test(start_paused = true)]
async fn zero_override_fails_at_once_without_calling_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut req = Request::new(());
    req.extensions_mut().insert(TimeoutOverride(Duration::ZERO));
    let (took, res) = timed(layer().layer(counting_pending(calls.clone())), req).await;
    assert_elapsed(&res.unwrap_err(), Duration::ZERO);
    assert_eq!(took, Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

// ---- deadline headers in ----

fn grpc_server_layer() -> TimeoutLayer {
    TimeoutLayer::builder()
        .timeout(DEFAULT)
        .grpc_timeout(true)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn incoming_grpc_timeout_shorter_than_local_wins() {
    for (value, want) in [
        ("50m", Duration::from_millis(50)),
        ("250000u", Duration::from_millis(250)),
        ("2S", DEFAULT), // longer than the local budget: local wins
        ("1M", DEFAULT),
    ] {
        let req = req_with_header("grpc-timeout", value);
        let (took, res) = timed(grpc_server_layer().layer(slow(None)), req).await;
        assert_elapsed(&res.unwrap_err(), want);
        assert_eq!(took, want, "grpc-timeout: {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn malformed_or_huge_grpc_timeout_falls_back_to_the_local_budget() {
    for value in [
        "",
        "50",
        "50x",
        "-50m",
        "5.0S",
        " 50m",
        "123456789m",
        "50ms",
        "99999999H",
    ] {
        let req = req_with_header("grpc-timeout", value);
        let (took, res) = timed(grpc_server_layer().layer(slow(None)), req).await;
        assert_elapsed(&res.unwrap_err(), DEFAULT);
        assert_eq!(took, DEFAULT, "grpc-timeout: {value:?}");
    }
    // Not valid UTF-8 either.
    let mut req = Request::new(());
    req.headers_mut().insert(
        "grpc-timeout",
        HeaderValue::from_bytes(b"\xfa\xfbm").unwrap(),
    );
    let (took, _) = timed(grpc_server_layer().layer(slow(None)), req).await;
    assert_eq!(took, DEFAULT);
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_is_ignored_unless_enabled() {
    let req = req_with_header("grpc-timeout", "10m");
    let (took, _) = timed(layer().layer(slow(None)), req).await;
    assert_eq!(took, DEFAULT);
}

#[tokio::test(start_paused = true)]
async fn expired_incoming_grpc_deadline_fails_without_calling_the_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let req = req_with_header("grpc-timeout", "0n");
    let (took, res) = timed(
        grpc_server_layer().layer(counting_pending(calls.clone())),
        req,
    )
    .await;
    let err = res.unwrap_err();
    assert_elapsed(&err, Duration::ZERO);
    assert_eq!(
        Rejection::find(&*err).unwrap().grpc_code(),
        GrpcCode::DeadlineExceeded
    );
    assert_eq!(took, Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn incoming_grpc_timeout_caps_a_longer_override() {
    let mut req = req_with_header("grpc-timeout", "30m");
    req.extensions_mut()
        .insert(TimeoutOverride(Duration::from_secs(60)));
    let (took, _) = timed(grpc_server_layer().layer(slow(None)), req).await;
    assert_eq!(took, Duration::from_millis(30));
}

#[tokio::test(start_paused = true)]
async fn millisecond_header_caps_the_local_budget() {
    let layer = TimeoutLayer::builder()
        .timeout(DEFAULT)
        .header("x-request-timeout")
        .build()
        .unwrap();
    for (value, want) in [
        ("120", Duration::from_millis(120)),
        ("5000", DEFAULT),
        ("120ms", DEFAULT), // malformed: ignored
        ("abc", DEFAULT),
        ("-1", DEFAULT),
        ("99999999999999999999", DEFAULT), // too many digits: ignored, no overflow
    ] {
        let req = req_with_header("x-request-timeout", value);
        let (took, _) = timed(layer.layer(slow(None)), req).await;
        assert_eq!(took, want, "x-request-timeout: {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn both_headers_the_smallest_wins() {
    let layer = TimeoutLayer::builder()
        .timeout(DEFAULT)
        .grpc_timeout(true)
        .header("x-request-timeout")
        .build()
        .unwrap();
    let req = Request::builder()
        .header("x-request-timeout", "300")
        .header("grpc-timeout", "200m")
        .body(())
        .unwrap();
    let (took, _) = timed(layer.layer(slow(None)), req).await;
    assert_eq!(took, Duration::from_millis(200));
}

// ---- deadline headers out ----

fn client_layer(timeout: Duration) -> TimeoutLayer {
    TimeoutLayer::builder()
        .timeout(timeout)
        .propagate_grpc_timeout(true)
        .build()
        .unwrap()
}

async fn sent_grpc_timeout(layer: &TimeoutLayer, req: Request<()>) -> Option<HeaderValue> {
    let seen = Arc::new(Mutex::new(None));
    layer
        .layer(recording(seen.clone()))
        .oneshot(req)
        .await
        .unwrap();
    let out = seen.lock().unwrap().take();
    out
}

#[tokio::test(start_paused = true)]
async fn outgoing_grpc_timeout_carries_the_budget_in_the_finest_unit() {
    for (budget, want) in [
        (Duration::from_millis(50), "50000000n"),
        (Duration::from_millis(1500), "1500000u"),
        (Duration::from_secs(30), "30000000u"),
        (Duration::from_secs(300), "300000m"),
        (Duration::from_secs(86_400 * 7), "604800S"),
    ] {
        let sent = sent_grpc_timeout(&client_layer(budget), Request::new(())).await;
        assert_eq!(sent.unwrap(), want, "{budget:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn outgoing_grpc_timeout_is_the_smaller_of_local_and_existing() {
    let layer = client_layer(DEFAULT);
    // The caller set a shorter deadline: keep it.
    let sent = sent_grpc_timeout(&layer, req_with_header("grpc-timeout", "200m")).await;
    assert_eq!(sent.unwrap(), "200000u");
    // A longer one is replaced by the local budget.
    let sent = sent_grpc_timeout(&layer, req_with_header("grpc-timeout", "10S")).await;
    assert_eq!(sent.unwrap(), "1000000u");
    // A malformed one is replaced too.
    let sent = sent_grpc_timeout(&layer, req_with_header("grpc-timeout", "soon")).await;
    assert_eq!(sent.unwrap(), "1000000u");
}

#[tokio::test(start_paused = true)]
async fn outgoing_grpc_timeout_follows_overrides() {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(TimeoutOverride(Duration::from_millis(20)));
    let sent = sent_grpc_timeout(&client_layer(DEFAULT), req).await;
    assert_eq!(sent.unwrap(), "20000000n");
}

#[tokio::test(start_paused = true)]
async fn no_grpc_timeout_is_written_unless_propagating() {
    assert_eq!(sent_grpc_timeout(&layer(), Request::new(())).await, None);
    assert_eq!(
        sent_grpc_timeout(&grpc_server_layer(), Request::new(())).await,
        None
    );
}

#[tokio::test(start_paused = true)]
async fn client_deadline_is_enforced_locally_too() {
    let (took, res) = timed(
        client_layer(Duration::from_millis(75)).layer(slow(None)),
        Request::new(()),
    )
    .await;
    assert_elapsed(&res.unwrap_err(), Duration::from_millis(75));
    assert_eq!(took, Duration::from_millis(75));
}

// ---- the deadline extension ----

/// What a service below a propagating layer received: `grpc-timeout` and the `Deadline` extension.
type Seen = Arc<Mutex<Vec<(Option<HeaderValue>, Option<Deadline>)>>>;

fn recording_deadline(
    seen: Seen,
    delay: Duration,
) -> impl Service<Request<()>, Response = Res, Error = BoxError> + Clone {
    service_fn(move |req: Request<()>| {
        seen.lock().unwrap().push((
            req.headers().get("grpc-timeout").cloned(),
            req.extensions().get::<Deadline>().copied(),
        ));
        async move {
            sleep(delay).await;
            Ok::<_, BoxError>(Response::new(()))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_propagating_layer_records_its_deadline() {
    let seen = Seen::default();
    let start = Instant::now();
    client_layer(Duration::from_millis(1500))
        .layer(recording_deadline(seen.clone(), Duration::ZERO))
        .oneshot(Request::new(()))
        .await
        .unwrap();
    let (header, deadline) = seen.lock().unwrap()[0].clone();
    assert_eq!(header.unwrap(), "1500000u");
    assert_eq!(
        deadline,
        Some(Deadline::new(
            start + Duration::from_millis(1500),
            Duration::from_millis(1500)
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn a_layer_that_does_not_propagate_records_nothing() {
    let seen = Seen::default();
    for layer in [layer(), grpc_server_layer()] {
        layer
            .layer(recording_deadline(seen.clone(), Duration::ZERO))
            .oneshot(Request::new(()))
            .await
            .unwrap();
    }
    assert!(seen.lock().unwrap().iter().all(|s| *s == (None, None)));
}

/// Sleeps `pause`, then forwards the request: time spent between an outer and an inner layer (a
/// backoff, a queue).
fn pausing<S>(
    pause: Duration,
    inner: S,
) -> impl Service<Request<()>, Response = Res, Error = BoxError> + Clone
where
    S: Service<Request<()>, Response = Res, Error = BoxError> + Clone,
{
    service_fn(move |req: Request<()>| {
        let mut inner = inner.clone();
        async move {
            sleep(pause).await;
            inner.ready().await?.call(req).await
        }
    })
}

#[tokio::test(start_paused = true)]
async fn an_inner_propagating_layer_never_grants_more_than_the_outer_deadline_has_left() {
    let seen = Seen::default();
    let start = Instant::now();
    // total 2 s → 1.9 s pass → per-try 500 ms → a service that never answers in time.
    let svc = client_layer(Duration::from_secs(2)).layer(pausing(
        Duration::from_millis(1900),
        client_layer(Duration::from_millis(500))
            .layer(recording_deadline(seen.clone(), Duration::from_secs(10))),
    ));
    let err = svc.oneshot(Request::new(())).await.unwrap_err();
    // The per-try layer timed out when the outer deadline did, with the 100 ms that were left.
    assert_elapsed(&err, Duration::from_millis(100));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let (header, deadline) = seen.lock().unwrap()[0].clone();
    assert_eq!(header.unwrap(), "100000u");
    assert_eq!(
        deadline.unwrap().instant(),
        start + Duration::from_secs(2),
        "the earlier, outer deadline is kept"
    );
}

#[tokio::test(start_paused = true)]
async fn an_inner_propagating_layer_records_its_own_earlier_deadline() {
    let seen = Seen::default();
    let start = Instant::now();
    let svc = client_layer(Duration::from_secs(2)).layer(pausing(
        Duration::from_millis(300),
        client_layer(Duration::from_millis(500))
            .layer(recording_deadline(seen.clone(), Duration::ZERO)),
    ));
    svc.oneshot(Request::new(())).await.unwrap();
    let (header, deadline) = seen.lock().unwrap()[0].clone();
    assert_eq!(header.unwrap(), "500000u");
    assert_eq!(
        deadline,
        Some(Deadline::new(
            start + Duration::from_millis(800),
            Duration::from_millis(500)
        ))
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_already_passed_fails_an_inner_propagating_layer_at_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let outer = Deadline::from_now(Instant::now(), Duration::from_millis(50)).unwrap();
    advance(Duration::from_millis(60)).await;
    let mut req = Request::new(());
    req.extensions_mut().insert(outer);
    let (took, res) = timed(
        client_layer(DEFAULT).layer(counting_pending(calls.clone())),
        req,
    )
    .await;
    assert_elapsed(&res.unwrap_err(), Duration::ZERO);
    assert_eq!(took, Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_layer_that_does_not_propagate_ignores_the_deadline() {
    // Only propagating layers read the extension: a plain timeout keeps its own budget.
    let outer = Deadline::from_now(Instant::now(), Duration::from_millis(50)).unwrap();
    advance(Duration::from_millis(60)).await;
    let mut req = Request::new(());
    req.extensions_mut().insert(outer);
    let (took, res) = timed(layer().layer(slow(Some(Duration::from_millis(200)))), req).await;
    assert!(res.is_ok());
    assert_eq!(took, Duration::from_millis(200));
}

// ---- cancellation ----

struct DropGuard(Arc<AtomicBool>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn guarded(
    dropped: Arc<AtomicBool>,
) -> impl Service<
    Request<()>,
    Response = Res,
    Error = BoxError,
    Future = impl Future<Output = Result<Res, BoxError>> + Send,
> + Send
       + 'static {
    service_fn(move |_req: Request<()>| {
        let guard = DropGuard(dropped.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<Res, BoxError>>().await
        }
    })
}

#[tokio::test(start_paused = true)]
async fn dropping_the_response_future_drops_the_inner_future() {
    // After the timer is armed.
    let dropped = Arc::new(AtomicBool::new(false));
    let mut svc = layer().layer(guarded(dropped.clone()));
    svc.ready().await.unwrap();
    {
        let mut fut = Box::pin(svc.call(Request::new(())));
        assert!(poll_once(fut.as_mut()).is_pending());
        advance(DEFAULT / 2).await;
        assert!(poll_once(fut.as_mut()).is_pending());
        assert!(!dropped.load(Ordering::SeqCst));
    }
    assert!(dropped.load(Ordering::SeqCst));

    // Before the first poll.
    let dropped = Arc::new(AtomicBool::new(false));
    let mut svc = layer().layer(guarded(dropped.clone()));
    drop(svc.call(Request::new(())));
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_drops_the_inner_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let svc = layer().layer(guarded(dropped.clone()));
    let handle = tokio::spawn(svc.oneshot(Request::new(())));
    let err = handle.await.unwrap().unwrap_err();
    assert_elapsed(&err, DEFAULT);
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn aborting_the_task_drops_the_inner_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let svc = layer().layer(guarded(dropped.clone()));
    let handle = tokio::spawn(svc.oneshot(Request::new(())));
    advance(Duration::from_millis(10)).await;
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    assert!(dropped.load(Ordering::SeqCst));
}

// ---- configuration ----

#[test]
fn zero_timeout_is_a_config_error() {
    let err = TimeoutLayer::builder()
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::ZeroTimeout);
    assert!(err.to_string().contains("zero"), "{err}");
    assert_eq!(
        TimeoutLayer::new(Duration::ZERO).unwrap_err(),
        BuildError::ZeroTimeout
    );
}

#[test]
fn missing_timeout_is_a_config_error() {
    let err = TimeoutLayer::builder().build().unwrap_err();
    assert_eq!(err, BuildError::MissingTimeout);
    assert!(err.to_string().contains(".timeout("), "{err}");
}

#[test]
fn invalid_header_names_are_config_errors() {
    for name in [
        "",
        "x request timeout",
        "x-timeout\n",
        "grpc-timeout",
        "GRPC-Timeout",
    ] {
        let err = TimeoutLayer::builder()
            .timeout(DEFAULT)
            .header(name)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::InvalidHeader { name: n, .. } if n == name),
            "{name:?}: {err}"
        );
        assert!(err.to_string().contains("deadline header"), "{err}");
    }
}

#[test]
fn the_layer_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>(_: &T) {}
    let layer = TimeoutLayer::builder()
        .timeout(DEFAULT)
        .override_with(|_: &Request<()>| None)
        .build()
        .unwrap();
    assert_send_sync(&layer);
    assert_eq!(layer.timeout(), DEFAULT);
    assert!(format!("{layer:?}").contains("TimeoutLayer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime() {
    // Real time, but nothing waits: one call ready at once, one failing at once on a zero budget.
    let svc = layer().layer(slow(Some(Duration::ZERO)));
    assert!(tokio::spawn(svc.clone().oneshot(Request::new(())))
        .await
        .unwrap()
        .is_ok());
    let mut req = Request::new(());
    req.extensions_mut().insert(TimeoutOverride(Duration::ZERO));
    assert!(tokio::spawn(svc.oneshot(req)).await.unwrap().is_err());
}
